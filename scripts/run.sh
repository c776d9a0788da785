#!/usr/bin/env bash
# Install syncd into ./.venv (once) and run the daemon on config.example.toml: it watches the sample folder
# examples/docs, keeps LanceDB in ./.syncd/index and serves HTTP on 127.0.0.1:8765.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c "import syncd, torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned, so nothing pulls the multi-GB CUDA build.
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e .
fi
exec .venv/bin/syncd --config "${SYNCD_CONFIG:-config.example.toml}" run "$@"
