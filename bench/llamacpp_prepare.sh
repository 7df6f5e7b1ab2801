#!/usr/bin/env bash
# Run HERE (the dev machine, network to PyPI), never on the GPU machine: fetches llama.cpp as the
# llama-cpp-python source distribution ships it under vendor/llama.cpp, trims it to what a build
# of `llama-batched-bench` (CPU and CUDA backends) and llama.cpp's own gguf-py need, and writes
# .carry/llamacpp.tar.gz (git-ignored, never committed; carried to the GPU machine with ".carry").
# The tarball also holds the real llama3 tokenizer.json from the shared test data, which
# bench/make_gguf.py turns into the GGUF's vocabulary.
#
# Pinned: llama-cpp-python 0.3.36, whose vendor/llama.cpp is llama.cpp commit
# 0c1e57098bba43ac29e6e3b677cdceebdd22334f (2026-10-01, "webgpu: fix SSM_SCAN binding aliasing
# (#29750)"); the sdist holds a one-commit shallow clone, so the build number is not derivable
# from it: issue 11's "b11312 (2026-10-01)" is the release of that day. bench/llamacpp_build.sh
# stamps the commit into the binary (LLAMA_BUILD_COMMIT) so its output names it.
#
# Trimmed away: models/, docs/, tests/, examples/, pocs/, benches/, the app and every tool but
# batched-bench (tools/CMakeLists.txt is rewritten to add only it), every ggml backend but CPU
# and CUDA, the .git pointer. Kept: CMake files, ggml (CPU, CUDA), src/, include/, common/,
# vendor/ (common and the vendor CMakeLists need all of it), gguf-py/, the licences.
#
# usage: bench/llamacpp_prepare.sh        (PIP=... to use another pip; WORK=... scratch folder)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=0.3.36
COMMIT=0c1e57098bba43ac29e6e3b677cdceebdd22334f
PIP=${PIP:-$(command -v pip3 || echo /work/venv-hf/bin/pip)}
WORK=${WORK:-$(mktemp -d)}
TOKENIZER=${TOKENIZER:-$ROOT/../shared/testdata/tokenizers/llama3/tokenizer.json}
DEST=$ROOT/.carry/llamacpp.tar.gz

[[ -f "$TOKENIZER" ]] || { echo "error: $TOKENIZER: missing (the llama3 tokenizer for the GGUF vocab)" >&2; exit 1; }
sdist=$WORK/llama_cpp_python-$VERSION.tar.gz
if [[ ! -f "$sdist" ]]; then
  "$PIP" download --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$WORK" >"$WORK/pip.log" 2>&1 ||
    { tail -5 "$WORK/pip.log" >&2; exit 1; }
fi
rm -rf "$WORK/src" && mkdir -p "$WORK/src"
tar xzf "$sdist" -C "$WORK/src" "llama_cpp_python-$VERSION/vendor/llama.cpp"
L=$WORK/src/llama_cpp_python-$VERSION/vendor/llama.cpp
got=$(git -C "$L" rev-parse HEAD 2>/dev/null || echo unknown)
[[ "$got" == "$COMMIT" || "$got" == unknown ]] ||
  { echo "error: llama-cpp-python $VERSION holds llama.cpp $got, not the pinned $COMMIT" >&2; exit 1; }

T=$WORK/llama.cpp
rm -rf "$T" && mkdir -p "$T/tools" "$T/ggml/src"
cp -a "$L"/{CMakeLists.txt,cmake,src,include,common,vendor,gguf-py,LICENSE,licenses} "$T/"
cp -a "$L/tools/batched-bench" "$T/tools/"
cat >"$T/tools/CMakeLists.txt" <<'EOF'
# Trimmed by headinfer's bench/llamacpp_prepare.sh: only llama-batched-bench.
find_package(Threads REQUIRED)
llama_add_compile_flags()
add_subdirectory(batched-bench)
EOF
cp -a "$L"/ggml/{CMakeLists.txt,cmake,include} "$T/ggml/"
find "$L/ggml/src" -maxdepth 1 -type f -exec cp -a {} "$T/ggml/src/" \;
cp -a "$L/ggml/src/ggml-cpu" "$L/ggml/src/ggml-cuda" "$T/ggml/src/"
# gguf-py: the package only (its scripts and tests are not needed by make_gguf.py)
rm -rf "$T/gguf-py/tests" "$T/gguf-py/examples"
echo "$COMMIT" >"$T/HEADINFER_LLAMACPP_COMMIT"
cp "$TOKENIZER" "$T/llama3-tokenizer.json"

mkdir -p "$(dirname "$DEST")"
tar czf "$DEST" -C "$WORK" llama.cpp
size=$(stat -c %s "$DEST")
echo "wrote $DEST: $((size / 1024 / 1024)) MiB ($(find "$T" -type f | wc -l) files), llama.cpp $COMMIT"
((size < 40 * 1024 * 1024)) || { echo "error: $DEST is over 40 MiB: it would not fit the carry with the rest" >&2; exit 1; }
