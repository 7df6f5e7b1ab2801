#!/usr/bin/env bash
# One 8K decode step's kernels, headinfer beside llama.cpp, by Nsight Compute (issue 11: 8K decode
# is 1.09x llama.cpp's; which kernels make the difference?). Both run without CUDA graphs, with the
# caches and clocks left as they are (--cache-control none --clock-control none), one metric
# (gpu__time_duration): kernel times without launch gaps. bench/profile_decode.py finds the
# repeating step at the end of each kernel sequence and splits it by what the kernels do.
# On the GPU machine, after run_gpu.sh STAGE=build (headinfer, llama.cpp and the GGUF built):
#   bench/profile_decode.sh [CTX]   -> $OUT/ncu-decode-{headinfer,llamacpp}.csv, $OUT/profile-decode.{md,json}
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/out}
CTX=${1:-8192}
SHAPE=${SHAPE:-llama3-8b}
STATE=${STATE:-$ROOT/build-bench}
HI=${HI:-$ROOT/build-gpu/src/cli/headinfer}
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
LCPP=${LCPP:-$ROOT/build-llamacpp/build-cuda$ARCH/bin/llama-batched-bench}
GGUF=${GGUF:-$STATE/$SHAPE-f16.gguf}
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
[[ -n "$NCU" ]] || { echo "error: no ncu on this machine" >&2; exit 1; }
mkdir -p "$OUT"
ncu_run() {  # name, command...
  local name=$1; shift
  timeout "${LIMIT:-240}" "$NCU" --metrics gpu__time_duration.sum --csv --print-units base \
    --cache-control none --clock-control none --log-file "$OUT/ncu-decode-$name.csv" "$@" \
    >"$OUT/ncu-decode-$name.out" 2>&1 || { echo "ncu $name failed: $(tail -3 "$OUT/ncu-decode-$name.out")"; return 1; }
}
args=()
ncu_run headinfer "$HI" bench --shape "$SHAPE" --device cuda --ctx "$CTX" --decode-only --n-decode 8 --no-graphs \
  && args+=("headinfer=$OUT/ncu-decode-headinfer.csv")
if [[ -x "$LCPP" && -f "$GGUF" ]]; then
  GGML_CUDA_DISABLE_GRAPHS=1 ncu_run llamacpp "$LCPP" -m "$GGUF" -npl 1 -fa on -ngl 99 -c $((CTX + 256)) \
    -npp "$CTX" -ntg 8 -ub 2048 -b 2048 && args+=("llama.cpp=$OUT/ncu-decode-llamacpp.csv")
else
  echo "llama.cpp or its GGUF missing ($LCPP, $GGUF): run bench/run_gpu.sh STAGE=build first"
fi
((${#args[@]})) || exit 1
python3 "$ROOT/bench/profile_decode.py" "${args[@]}" --json "$OUT/profile-decode.json" | tee "$OUT/profile-decode.md"
