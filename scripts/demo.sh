#!/usr/bin/env bash
# The README's first command: install, build, then make a small random-weight model and generate
# from it (no download needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target headinfer
build/src/cli/headinfer make-model --shape tiny --dtype bf16 -o build/tiny-model
build/src/cli/headinfer generate -m build/tiny-model --prompt-ids 1,42,7,99 -n 16 --ignore-eos
