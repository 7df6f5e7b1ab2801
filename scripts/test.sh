#!/usr/bin/env bash
# The README's test command: build everything (the CUDA backend too where nvcc exists) and run
# every test with CTest. Tests needing ../shared/testdata report skipped when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure -j"$(nproc)"
