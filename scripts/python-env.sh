#!/usr/bin/env bash
# The Python environment the tests use: a venv with the pinned packages of
# scripts/python-requirements.txt, made once and reused (keyed by that file's hash) under
# $HEADINFER_PYENV_CACHE (default ~/.cache/headinfer). Prints the venv's python. The first run
# downloads torch from PyPI (its Linux wheel brings the CUDA libraries: ~2 min here).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REQ=$ROOT/scripts/python-requirements.txt
KEY=$(sha256sum "$REQ" | cut -c1-12)
VENV=${HEADINFER_PYENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/headinfer}/venv-$KEY
if [ ! -f "$VENV/.complete" ]; then
  rm -rf "$VENV"
  start=$(date +%s)
  python3 -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ" >&2
  touch "$VENV/.complete"
  echo "python-env: made $VENV in $(( $(date +%s) - start )) s" >&2
fi
echo "$VENV/bin/python"
