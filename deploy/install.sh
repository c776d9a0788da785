#!/usr/bin/env bash
# Install syncd as a systemd service, or upgrade an installed one:
#   * a virtualenv under /opt/syncd/venv with syncd from this source tree;
#   * /etc/syncd/config.toml and /etc/syncd/syncd.env from the examples (never overwritten);
#   * the embedding model prepared once (`syncd model prepare`: the ONNX export the default backend runs);
#   * /etc/systemd/system/syncd.service, checked with systemd-analyze, enabled and (re)started.
# Usage: sudo deploy/install.sh [--no-start]
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${SYNCD_PREFIX:-/opt/syncd}
ETC=${SYNCD_ETC:-/etc/syncd}
UNIT=/etc/systemd/system/syncd.service
PYTHON=${PYTHON:-python3}
START=1
[ "${1:-}" = "--no-start" ] && START=0

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (sudo)" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "install.sh: syncd needs Python 3.11 or newer ($PYTHON is older)" >&2; exit 1; }

echo "==> virtualenv in $PREFIX/venv"
install -d -m 0755 "$PREFIX"
[ -x "$PREFIX/venv/bin/python" ] || "$PYTHON" -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/python" -m pip install -q --upgrade pip
# torch first, pinned, so nothing pulls the multi-GB CUDA build (same pin as pyproject.toml).
"$PREFIX/venv/bin/python" -m pip install -q torch==2.13.0
# The onnx extra: ONNX Runtime runs the default backend (auto -> onnx-int8 on a CPU).
"$PREFIX/venv/bin/python" -m pip install -q --upgrade "$SRC[onnx]"
rm -rf "$PREFIX/deploy" && cp -r "$SRC/deploy" "$PREFIX/deploy"
"$PREFIX/venv/bin/syncd" --version

echo "==> configuration in $ETC"
install -d -m 0755 "$ETC"
if [ ! -e "$ETC/config.toml" ]; then
  # World-readable on purpose: the service runs as a dynamic user. It holds no secrets.
  install -m 0644 "$SRC/deploy/config.toml" "$ETC/config.toml"
  echo "    wrote $ETC/config.toml: edit the connectors, then: systemctl reload syncd"
fi
if [ ! -e "$ETC/syncd.env" ]; then
  install -m 0600 "$SRC/deploy/syncd.env.example" "$ETC/syncd.env"
  echo "    wrote $ETC/syncd.env (mode 0600) for secrets"
fi

echo "==> embedding model"
# The one-time ONNX export (tens of seconds), done now rather than at the service's first start. It runs as
# the service runs (a dynamic user owning StateDirectory=syncd), so the cache it writes is the service's.
# An existing index keeps its backend; `syncd status` then says which one and why.
systemd-run --quiet --wait --pipe --collect --service-type=exec \
  --property=DynamicUser=yes --property=StateDirectory=syncd --property=StateDirectoryMode=0700 \
  --property=CacheDirectory=syncd --property=UMask=0077 --property=WorkingDirectory=/var/lib/syncd \
  --property=EnvironmentFile=-"$ETC/syncd.env" --setenv=HOME=/var/lib/syncd --setenv=XDG_CACHE_HOME=/var/cache/syncd \
  --setenv=HF_HUB_OFFLINE=1 --setenv=TRANSFORMERS_OFFLINE=1 \
  "$PREFIX/venv/bin/syncd" --config "$ETC/config.toml" model prepare

echo "==> unit $UNIT"
install -m 0644 "$SRC/deploy/syncd.service" "$UNIT"
systemd-analyze verify "$UNIT"
systemd-analyze security --offline=yes --threshold=20 "$UNIT" | tail -n 1
systemctl daemon-reload
systemctl enable syncd.service
if [ "$START" = 1 ]; then
  # restart, not start: an upgrade must load the new code. READY=1 comes once the catch-up has started.
  systemctl restart syncd.service
  systemctl --no-pager status syncd.service | head -n 5 || true
fi
echo "==> done. Logs: journalctl -u syncd -f"
