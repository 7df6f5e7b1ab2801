#!/usr/bin/env bash
# On the GPU machine, after `HEADINFER_PYTHON_CHECK=1 HEADINFER_BUILD_ONLY=1 scripts/gpu_check.sh`:
# the Python package's CUDA engine crashed there (2026-12-06: a segfault, or `free(): invalid
# pointer`, inside _core.Engine(...) on the tiny llama3-bf16, with or without torch imported). This
# runs the smallest cases under a native backtrace preload (crash_backtrace.c) and names _core's
# frames, so one call says where it dies and which variant is spared:
#   cpu        the same model on device='cpu' (the module itself on this machine)
#   cuda-f32   f32 weights on the GPU (no cuDNN SDPA: that path takes 16-bit KV only)
#   cuda-bf16  the failing case
# and which CUDA libraries the process loaded (LD_DEBUG=libs). Output: $OUT/py_crash/*.log.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/out}/py_crash
BUILD=${BUILD:-$ROOT/build-gpu}
mkdir -p "$OUT"
CUDNN_ROOT=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH=$ROOT/.carry/deps/usr/lib/x86_64-linux-gnu${CUDNN_ROOT:+:$CUDNN_ROOT/lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONPATH=$BUILD/python
TINY=${TINY:-$ROOT/.carry/testdata/models/tiny}
gcc -shared -fPIC -O0 -o /tmp/crash_backtrace.so "$ROOT/scripts/debug/crash_backtrace.c" || exit 1
CORE=$(ls "$BUILD"/python/headinfer/_core*.so)
run() {  # run NAME DEVICE MODEL
  local name=$1
  LD_PRELOAD=/tmp/crash_backtrace.so timeout 60 python3 -c "
import numpy as np, headinfer
hm = headinfer.HeadInferModel.from_pretrained('$TINY/$3', device='$2')
print('[py-crash] $name ok', hm.generate(np.array([[1, 2, 3, 4, 5]]), max_new_tokens=4, do_sample=False).tolist(), flush=True)
" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "[py-crash] $name: exit $rc"
  grep -E "^\[py-crash\]|Error|error|invalid" "$OUT/$name.log" | head -5
  # _core's frames by name: addr2line reads the symbol table (the Release build has no DWARF)
  grep -oE "_core[^ ]*\.so\(\+0x[0-9a-f]+\)" "$OUT/$name.log" | grep -oE "0x[0-9a-f]+" | while read -r off; do
    echo "  _core+$off $(addr2line -f -C -e "$CORE" "$off" | head -1)"
  done | head -40
  grep -E "^/" "$OUT/$name.log" | grep -v "_core" | sed 's/^/  /' | head -25
}
run cpu cpu llama3-bf16
run cuda-f32 cuda llama3-f32
run cuda-bf16 cuda llama3-bf16
LD_DEBUG=libs python3 -c "import headinfer" 2>&1 | grep -E "calling init: .*(cud|cublas|nvrtc|stdc)" | sed 's/^ *[0-9]*: *//' | sort -u >"$OUT/libs.log"
cat "$OUT/libs.log"
nm -D --defined-only "$CORE" | wc -l | sed 's/^/[py-crash] symbols _core exports: /'
