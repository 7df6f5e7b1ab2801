#!/usr/bin/env bash
# The one script to run on the GPU machine: configures and builds the CUDA tests there with CMake,
# runs cuda_ops_tests (every CUDA op against the CPU reference, then the tiny models end to end),
# and writes logs under $OUT (./out when unset). With HEADINFER_BF16_CHECK=1 it then runs
# scripts/bf16_check.py: the bf16 tiny checkpoints against transformers in bf16 on the same GPU
# (needs the machine's torch + transformers; report in $OUT/bf16_check.json).
#
# The GPU machine has CMake and nvcc but neither the nlohmann-json, CLI11 nor GoogleTest packages,
# and no network. So, on a machine that has them (the dev box), first run
#     scripts/gpu_check.sh --prepare
# which copies those packages' headers, static libraries and CMake configs into .carry/deps/usr
# (and Oniguruma, which the tokenizer module needs at configure time) and the shared test models into .carry/testdata (both git-ignored, ~12 MiB), then send the
# repository with `.carry` carried and run `scripts/gpu_check.sh` there. It builds in build-gpu/
# for the card's own architecture only (sm_90 on H100/H200: a third of the compile time of the
# sm_80/89/90 build CI does), reusing build-gpu/ when the machine is still warm.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPS=$ROOT/.carry/deps/usr

if [[ "${1:-}" == "--prepare" ]]; then
  rm -rf "$ROOT/.carry/deps" "$ROOT/.carry/testdata" "$ROOT/.carry/cudnn_frontend"
  mkdir -p "$DEPS/include" "$DEPS/lib/x86_64-linux-gnu/cmake" "$DEPS/share/cmake" "$ROOT/.carry/testdata"
  cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/gtest /usr/include/gmock "$DEPS/include/"
  cp /usr/lib/x86_64-linux-gnu/libgtest*.a /usr/lib/x86_64-linux-gnu/libgmock*.a "$DEPS/lib/x86_64-linux-gnu/"
  cp -r /usr/lib/x86_64-linux-gnu/cmake/GTest "$DEPS/lib/x86_64-linux-gnu/cmake/"
  cp -r /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 "$DEPS/share/cmake/"
  # Oniguruma (the tokenizer's regex engine): headers, library, and a relocatable .pc file.
  cp /usr/include/onig*.h "$DEPS/include/"
  cp -P /usr/lib/x86_64-linux-gnu/libonig.so* "$DEPS/lib/x86_64-linux-gnu/"
  mkdir -p "$DEPS/lib/x86_64-linux-gnu/pkgconfig"
  sed -e 's|^prefix=.*|prefix=${pcfiledir}/../../..|' -e 's|^exec_prefix=.*|exec_prefix=${prefix}|' \
    -e 's|^libdir=.*|libdir=${prefix}/lib/x86_64-linux-gnu|' -e 's|^includedir=.*|includedir=${prefix}/include|' \
    /usr/lib/x86_64-linux-gnu/pkgconfig/oniguruma.pc >"$DEPS/lib/x86_64-linux-gnu/pkgconfig/oniguruma.pc"
  cp -r "${HEADINFER_SHARED:-$ROOT/../shared}/testdata/models" "$ROOT/.carry/testdata/"
  # cpp-httplib (headinfer serve): Debian's header and shared library, and the Brotli libraries it
  # links (OpenSSL 3 and zlib are on the GPU machine); the llama3 tokenizer for serve_gpu_check.sh.
  cp /usr/include/httplib.h "$DEPS/include/"
  cp -P /usr/lib/x86_64-linux-gnu/libcpp-httplib.so* /lib/x86_64-linux-gnu/libbrotli{common,dec,enc}.so* \
    "$DEPS/lib/x86_64-linux-gnu/"
  mkdir -p "$ROOT/.carry/testdata/tokenizers"
  cp -r "${HEADINFER_SHARED:-$ROOT/../shared}/testdata/tokenizers/llama3" "$ROOT/.carry/testdata/tokenizers/"
  # cudnn-frontend (header-only, from PyPI) for the cuDNN SDPA prefill path; cuDNN itself is PyTorch's there.
  fe_tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: nvidia-cudnn-frontend==1.32.0 -d "$fe_tmp"
  python3 -c 'import glob, sys, zipfile
for w in glob.glob(sys.argv[1] + "/nvidia_cudnn_frontend-*.whl"):
    z = zipfile.ZipFile(w)
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("include/")])' "$fe_tmp" "$ROOT/.carry/cudnn_frontend"
  rm -rf "$fe_tmp"
  chmod -R u+w "$ROOT/.carry"
  du -sh "$ROOT/.carry"
  exit 0
fi

OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee "$OUT/gpu.txt"
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
[[ -n "$ARCH" ]] || ARCH=90

start=$(date +%s)
export PKG_CONFIG_PATH=$DEPS/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export LD_LIBRARY_PATH=$DEPS/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# cuDNN for the SDPA prefill path: the copy PyTorch ships (site-packages/nvidia/cudnn), if any.
CUDNN_ROOT=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null || true)
[[ -n "$CUDNN_ROOT" ]] && export LD_LIBRARY_PATH=$CUDNN_ROOT/lib:$LD_LIBRARY_PATH
# HEADINFER_PYTHON_CHECK=1: instead of the CUDA tests, the Python package (issue 12), then
# scripts/python_gpu_check.py (HEADINFER_PYTHON_CHECK_ARGS: its options, e.g. "--parts bf16").
# HEADINFER_CMAKE_ARGS: more configure arguments (e.g. -DCMAKE_CXX_FLAGS=-g1 for line numbers in
# backtraces). One build folder for all of it (every object is position-independent, so the module shares them
# with the CLI and the tests): a plain run keeps whatever HEADINFER_PYTHON the folder has.
BUILD=$ROOT/build-gpu
PY_ARGS=()
TARGETS=(cuda_ops_tests headinfer)
if [[ "${HEADINFER_PYTHON_CHECK:-}" == 1 ]]; then
  PY_ARGS=(-DHEADINFER_PYTHON=ON -DPython_EXECUTABLE="$(command -v python3)")
  TARGETS=(headinfer _core)
fi
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DHEADINFER_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DCMAKE_PREFIX_PATH="$DEPS" -DHEADINFER_CUDNN_ROOT="$CUDNN_ROOT" \
  "${PY_ARGS[@]}" ${HEADINFER_CMAKE_ARGS:-} >"$OUT/configure.log" 2>&1 ||
  { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build "$BUILD" --target "${TARGETS[@]}" -j "$(nproc)" >"$OUT/build.log" 2>&1 ||
  { grep -E "error" "$OUT/build.log" | head -30; exit 1; }
echo "configure + build: $(( $(date +%s) - start )) s (sm_$ARCH)"
# scripts/gpu_sanitize.sh builds through here and runs its own tools.
[[ "${HEADINFER_BUILD_ONLY:-}" == 1 ]] && exit 0
grep -E "cuDNN SDPA" "$OUT/configure.log" || true

export HEADINFER_TESTDATA=$ROOT/.carry/testdata
rc=0
if [[ "${HEADINFER_PYTHON_CHECK:-}" != 1 ]]; then
  "$BUILD/tests/cuda/cuda_ops_tests" --gtest_output="xml:$OUT/cuda_ops_tests.xml" \
    --gtest_also_run_disabled_tests "$@" \
    >"$OUT/cuda_ops_tests.log" 2>&1 || rc=$?
  grep -E "^\[model\]|FAILED|Failure|error" "$OUT/cuda_ops_tests.log" | head -60 || true
  grep -E "^\[bench\]" "$OUT/cuda_ops_tests.log" || true
  grep -E "^\[max-err\]" "$OUT/cuda_ops_tests.log" | sort -t= -k3 -g -r | head -12 || true
  tail -4 "$OUT/cuda_ops_tests.log"
fi
# bf16 checkpoints against transformers in bf16 on this card (issue 5): one [bf16] line per model/prompt.
if [[ "${HEADINFER_BF16_CHECK:-}" == 1 ]]; then
  bf16_rc=0
  python3 "$ROOT/scripts/bf16_check.py" --bin "$BUILD/src/cli/headinfer" --testdata "$HEADINFER_TESTDATA" \
    --out "$OUT" >"$OUT/bf16_check.log" 2>&1 || bf16_rc=$?
  grep -E "^\[bf16\]" "$OUT/bf16_check.log" || true
  if (( bf16_rc != 0 )); then
    grep -qE "^\[bf16\] summary" "$OUT/bf16_check.log" || tail -5 "$OUT/bf16_check.log"
    echo "bf16_check.py exited $bf16_rc (log: $OUT/bf16_check.log)"
    (( rc != 0 )) || rc=$bf16_rc
  fi
fi
if [[ "${HEADINFER_PYTHON_CHECK:-}" == 1 ]]; then
  py_rc=0
  PYTHONPATH="$BUILD/python${PYTHONPATH:+:$PYTHONPATH}" python3 "$ROOT/scripts/python_gpu_check.py" \
    --bin "$BUILD/src/cli/headinfer" --testdata "$HEADINFER_TESTDATA" --out "$OUT" \
    ${HEADINFER_PYTHON_CHECK_ARGS:-} >"$OUT/python_gpu_check.log" 2>&1 || py_rc=$?
  grep -E "^\[py-gpu\]" "$OUT/python_gpu_check.log" || tail -20 "$OUT/python_gpu_check.log"
  (( rc != 0 )) || rc=$py_rc
fi
# PyTorch's SDPA on the same card, the peer for the attention benchmark (HEADINFER_BENCH_PEER=1).
if [[ -n "${HEADINFER_BENCH_PEER:-}" ]]; then
  python3 "$ROOT/bench/attention/sdpa_peer.py" >"$OUT/sdpa_peer.log" 2>&1 || true
  grep -E "^\[peer\]" "$OUT/sdpa_peer.log" || tail -5 "$OUT/sdpa_peer.log"
fi
exit $rc
