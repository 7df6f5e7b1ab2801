#!/usr/bin/env bash
# The A/B of the engine's switches (include/headinfer/env_switch.h, issue 11) in two calls on one
# warm machine, each switch against the same binary with it unset (BASE=none of decode_ab.sh):
#   bench/switches_ab.sh 1   the GEMM probe (GPU) while the tree builds (CPU); the prefill A/B at 8K of
#                       the three prefill switches, alone and together (BASE=none: the same binary
#                       with each unset), with the full CUDA tests; then the CUDA tests with all four
#                       switches on (~420 s)
#   bench/switches_ab.sh 2   the decode A/B of the GEMV unroll switch at 8K and 128K, and the 128K
#                       prefill unset against all three prefill switches, one round (~330 s)
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s); el(){ echo $(($(date +%s)-T0)); }
ROOT_OUT=$OUT
ALL3=HEADINFER_GATE_UP_16=1,HEADINFER_RESIDUAL_GEMM=1,HEADINFER_O_DIRECT=1
if [[ "${1:-1}" == 1 ]]; then
  ( OUT=$ROOT_OUT bench/gemm_probe.sh > "$ROOT_OUT/gemm-probe.txt" 2>&1; echo "probe rc=$? at $(el) s" >> "$ROOT_OUT/gemm-probe.txt" ) &
  OUT=$ROOT_OUT/prefill MODE=prefill BASE=none CTXS=8192 ROUNDS=2 REPEAT=3 \
    VARIANTS="HEADINFER_GATE_UP_16=1 HEADINFER_RESIDUAL_GEMM=1 HEADINFER_O_DIRECT=1 $ALL3" \
    bench/decode_ab.sh 2>&1 | tail -22
  wait
  cat "$ROOT_OUT/gemm-probe.txt"
  echo "== prefill + probe done at $(el) s"
  CUDNN_ROOT=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])')
  HEADINFER_TESTDATA=$PWD/.carry/testdata HEADINFER_GEMV_UNROLL=8 HEADINFER_GATE_UP_16=1 HEADINFER_RESIDUAL_GEMM=1 \
    HEADINFER_O_DIRECT=1 LD_LIBRARY_PATH=$PWD/.carry/deps/usr/lib/x86_64-linux-gnu:$CUDNN_ROOT/lib \
    timeout 150 build-gpu/tests/cuda/cuda_ops_tests >"$ROOT_OUT/tests-switches.log" 2>&1
  echo "tests with the four switches on rc=$? at $(el) s: $(grep -E '^\[  (PASSED|FAILED)' "$ROOT_OUT/tests-switches.log" | tr '\n' ' ')"
  grep -E '^\[  FAILED  \] [A-Za-z]' "$ROOT_OUT/tests-switches.log" | head
  grep -E '^\[model\]' "$ROOT_OUT/tests-switches.log" | head -40
  gzip -f "$ROOT_OUT/tests-switches.log"
else
  OUT=$ROOT_OUT/decode MODE=decode BASE=none CTXS="8192 131072" ROUNDS=2 TESTS=0 VARIANTS="HEADINFER_GEMV_UNROLL=8" \
    bench/decode_ab.sh 2>&1 | tail -22
  echo "== decode done at $(el) s"
  OUT=$ROOT_OUT/prefill128k MODE=prefill BASE=none CTXS=131072 ROUNDS=1 REPEAT=2 TESTS=0 VARIANTS="$ALL3" \
    bench/decode_ab.sh 2>&1 | tail -12
  echo "== 128K prefill done at $(el) s"
fi
