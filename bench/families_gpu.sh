#!/usr/bin/env bash
# Issue 14's bench shapes on the GPU machine: `headinfer bench --shape gemma2-9b` and
# `--shape phi3.5-mini` (random weights, bf16) at a 128K prompt under a 24 GiB cap, with their
# defaults, beside transformers on the same shape in the same call (bench/peers.py: SDPA, bf16,
# attention_mask of ones, no pad_token_id; once under the same 24 GiB cap and once uncapped).
# Needs build-gpu/src/cli/headinfer (scripts/gpu_check.sh builds it). Writes
# $OUT/families/<shape>.{hi,tf}.json and logs, and $OUT/families/summary.json (one row per run).
#   SHAPES="gemma2-9b phi3.5-mini" CTX=128K N_DECODE=8 bench/families_gpu.sh
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/out}/families
mkdir -p "$OUT"
HI=${HI:-$ROOT/build-gpu/src/cli/headinfer}
DEPS=$ROOT/.carry/deps/usr
CUDNN_ROOT=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH=$DEPS/lib/x86_64-linux-gnu${CUDNN_ROOT:+:$CUDNN_ROOT/lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
CTX=${CTX:-128K}
N_DECODE=${N_DECODE:-8}
LIMIT=${LIMIT:-150}  # seconds per process
ctx_tokens=$(python3 -c "import sys; t=sys.argv[1]; print(int(t[:-1])*1024 if t[-1] in 'kK' else int(t))" "$CTX")
for shape in ${SHAPES:-gemma2-9b phi3.5-mini}; do
  t0=$(date +%s)
  timeout "$LIMIT" "$HI" bench --shape "$shape" --device cuda --ctx "$CTX" --gpu-mem 24GiB --n-decode "$N_DECODE" \
    --json >"$OUT/$shape.hi.json" 2>"$OUT/$shape.hi.log"
  echo "[family] $shape headinfer (defaults, 24 GiB): exit $? in $(( $(date +%s) - t0 )) s"
  head -c 600 "$OUT/$shape.hi.json"; echo
  t0=$(date +%s)
  timeout "$LIMIT" python3 "$ROOT/bench/peers.py" --shape "$shape" --ctx "$ctx_tokens" --runs 1 --n-decode "$N_DECODE" \
    --configs default@24,default >"$OUT/$shape.tf.json" 2>"$OUT/$shape.tf.log"
  echo "[family] $shape transformers (default@24, default): exit $? in $(( $(date +%s) - t0 )) s"
  head -c 900 "$OUT/$shape.tf.json"; echo
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/card.txt"
