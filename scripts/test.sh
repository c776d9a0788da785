#!/usr/bin/env bash
# Install everything (Debian packages for the MediaWiki tests, a venv with syncd and its test extras)
# and run the whole test suite. Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v git >/dev/null || need_apt+=(git)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v setfacl >/dev/null || need_apt+=(acl)  # POSIX ACLs in the permission tests
command -v php >/dev/null || need_apt+=(php-cli)
[ -f /usr/share/mediawiki/maintenance/install.php ] || need_apt+=(mediawiki)
php -m 2>/dev/null | grep -qi '^pdo_sqlite$' || need_apt+=(php-sqlite3)
php -m 2>/dev/null | grep -qi '^intl$' || need_apt+=(php-intl)
php -m 2>/dev/null | grep -qi '^mbstring$' || need_apt+=(php-mbstring)
php -m 2>/dev/null | grep -qi '^xml$' || need_apt+=(php-xml)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

# A real Azure Blob Storage server for the az:// tests: Azurite, Microsoft's emulator, from the npm registry.
if [ ! -x .cache/azurite/node_modules/.bin/azurite-blob ]; then
  if ! command -v npm >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends nodejs npm
  fi
  npm install --prefix .cache/azurite --no-audit --no-fund --loglevel=error azurite@3.35.0
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned, so nothing pulls the multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test]'

# The type check of syncd/ and connectors/ (strict; [tool.mypy] in pyproject.toml) comes first.
.venv/bin/python -m mypy

export SYNCD_REQUIRE_MEDIAWIKI=1
exec .venv/bin/python -m pytest -n "${SYNCD_TEST_WORKERS:-2}" "$@"
