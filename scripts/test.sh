#!/usr/bin/env bash
# The README's test command: build everything (the CUDA backend too where nvcc exists) and run
# every test with CTest, then the Python package's tests with pytest (the extension is built in
# the same tree: -DHEADINFER_PYTHON=ON, imported from build/python). The pinned Python packages
# (torch, transformers, ...) live in a venv made once by scripts/python-env.sh. Tests needing
# ../shared/testdata report skipped when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
PY=$(scripts/python-env.sh)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DHEADINFER_PYTHON=ON -DPython_EXECUTABLE="$PY" >/dev/null
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure -j"$(nproc)"
PYTHONPATH="$PWD/build/python" "$PY" -m pytest tests/python -q -p no:cacheprovider
# The benchmark harness (report, peers, GGUF writer, profile parsing): CPU-only, ~25 s.
"$PY" -m pytest bench/test_bench.py -q -p no:cacheprovider

# `headinfer serve` with the openai client (issue 13): a venv in build/ with the pinned client,
# then tests/server/*.py against this build's binary.
if [ ! -x build/venv-serve/bin/python ]; then
  python3 -m venv build/venv-serve
  build/venv-serve/bin/pip install --quiet openai==3.63.0 pytest==9.2.0
fi
HEADINFER_BIN=build/src/cli/headinfer build/venv-serve/bin/python -m pytest -q tests/server
