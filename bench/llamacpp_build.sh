#!/usr/bin/env bash
# Builds llama.cpp's `llama-batched-bench` from the tarball bench/llamacpp_prepare.sh made
# (.carry/llamacpp.tar.gz), with no network: on the GPU machine with CUDA for sm_90, or here on
# the CPU (GGML_CUDA=OFF) to check the trimmed tree builds. Only the llama-batched-bench target.
# Idempotent: a tree already unpacked and a build folder already there are reused (an interrupted
# build resumes), so consecutive calls on a warm machine pay once.
#
# usage: bench/llamacpp_build.sh        prints the binary's path on its last line
# env:   LLAMACPP_DIR [build-llamacpp]  where the tree is unpacked and built
#        GGML_CUDA [ON]  CUDA_ARCH [90]  JOBS [nproc]  CONFIGURE_ONLY=1 (check CMake passes and stop)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARBALL=${TARBALL:-$ROOT/.carry/llamacpp.tar.gz}
DIR=${LLAMACPP_DIR:-$ROOT/build-llamacpp}
GGML_CUDA=${GGML_CUDA:-ON}
CUDA_ARCH=${CUDA_ARCH:-90}
JOBS=${JOBS:-$(nproc)}
SRC=$DIR/llama.cpp
BUILD=$DIR/build-$([[ $GGML_CUDA == ON ]] && echo "cuda$CUDA_ARCH" || echo cpu)

if [[ ! -f "$SRC/HEADINFER_LLAMACPP_COMMIT" ]]; then
  [[ -f "$TARBALL" ]] || { echo "error: $TARBALL: missing (run bench/llamacpp_prepare.sh on the dev machine)" >&2; exit 1; }
  mkdir -p "$DIR"
  tar xzf "$TARBALL" -C "$DIR"
fi
COMMIT=$(cat "$SRC/HEADINFER_LLAMACPP_COMMIT")
# The tree has no .git: keep ggml's CMake from taking the commit of a repository around it.
export GIT_CEILING_DIRECTORIES=$DIR
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache
  -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
cuda=(-DGGML_CUDA="$GGML_CUDA")
if [[ $GGML_CUDA == ON ]]; then
  command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] || { echo "error: nvcc not found" >&2; exit 1; }
  command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
  cuda+=(-DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" -DGGML_CUDA_NCCL=OFF)  # one GPU: no NCCL
fi
t0=$(date +%s)
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  # GGML_NATIVE: tuned for the CPU it runs on, as a user building llama.cpp gets by default.
  cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release "${cuda[@]}" "${launcher[@]}" \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_COMMIT="${COMMIT:0:7}" -DLLAMA_BUILD_NUMBER=0 -DBUILD_SHARED_LIBS=OFF \
    >"$DIR/configure-$(basename "$BUILD").log" 2>&1 ||
    { tail -30 "$DIR/configure-$(basename "$BUILD").log" >&2; rm -f "$BUILD/CMakeCache.txt"; exit 1; }
fi
echo "llama.cpp ${COMMIT:0:12}: configured in $(($(date +%s) - t0)) s ($BUILD)" >&2
[[ -n "${CONFIGURE_ONLY:-}" ]] && exit 0
cmake --build "$BUILD" --target llama-batched-bench -j "$JOBS" >"$DIR/build-$(basename "$BUILD").log" 2>&1 ||
  { grep -E "error|Error" "$DIR/build-$(basename "$BUILD").log" | head -20 >&2; exit 1; }
echo "llama.cpp ${COMMIT:0:12}: llama-batched-bench built in $(($(date +%s) - t0)) s with -j$JOBS" >&2
echo "$BUILD/bin/llama-batched-bench"
