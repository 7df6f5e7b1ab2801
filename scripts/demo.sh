#!/usr/bin/env bash
# The README's first command: install, build, then tell a story with the shipped demo model
# (models/stories260k: real trained weights, 1 MB, no download). The speed line follows on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target headinfer
build/src/cli/headinfer generate -m models/stories260k -p "Once upon a time" -n 200
