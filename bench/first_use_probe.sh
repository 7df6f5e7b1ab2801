#!/usr/bin/env bash
# Where does a short prefill's time go? (issue 11) On the GPU machine, with .carry prepared as for
# run_gpu.sh: builds headinfer for the card, then runs `headinfer bench` on SHAPE with default flags
# (the planner's chunk), three prefills per context on one engine (the first, then two warm ones),
# with HEADINFER_TRACE=1 (every cuDNN graph build and its time on stderr), and the old default chunk
# (512) for comparison. Prints one line per run; JSON and stderr logs under $OUT.
# Knobs: SHAPE (llama3-8b), CONTEXTS (8K), LONG_CONTEXTS (128K: one prefill each, dynamic only).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/out}
SHAPE=${SHAPE:-llama3-8b}
CONTEXTS=${CONTEXTS:-8K}
LONG_CONTEXTS=${LONG_CONTEXTS:-128K}
mkdir -p "$OUT"
t0=$(date +%s)
BUILD_ONLY=1 "$ROOT/bench/run_gpu.sh"
echo "build: $(( $(date +%s) - t0 )) s"
HI=$ROOT/build-gpu/src/cli/headinfer
DEPS=$ROOT/.carry/deps/usr
CUDNN_ROOT=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH=$DEPS/lib/x86_64-linux-gnu${CUDNN_ROOT:+:$CUDNN_ROOT/lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "cuDNN at run time: $(ldd "$HI" | grep -i cudnn || echo 'not linked')"
grep -h "CUDNN_MAJOR\|CUDNN_MINOR\|CUDNN_PATCHLEVEL" "${CUDNN_ROOT:-/nonexistent}/include/cudnn_version.h" 2>/dev/null | head -3 || true
summary() {  # label, json
  python3 - "$1" "$2" <<'PY'
import json, sys
label, path = sys.argv[1], sys.argv[2]
d = json.load(open(path))
for r in d["results"]:
    runs = ", ".join(f"{x:.3f}" for x in [r["prefill_seconds"]] + (r.get("prefill_warm_all") or []))
    print(f"{label}: ctx {r['context']} chunk {r.get('chunk')}/{r.get('mlp_chunk')} set-up {r.get('engine_setup_seconds', 0):.2f} s "
          f"prefill runs [{runs}] decode {r['decode_seconds_per_token']*1e3:.2f} ms/token peak {r['gpu_peak_bytes']/2**30:.2f} GiB")
PY
}
run() {  # label, file, env..., -- flags...
  local label=$1 file=$2; shift 2
  local envs=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do envs+=("$1"); shift; done
  shift
  local s=$(date +%s.%N)
  if env "${envs[@]}" HEADINFER_TRACE=1 "$HI" bench --shape "$SHAPE" --device cuda --json "$@" >"$OUT/$file.json" 2>"$OUT/$file.err"; then
    summary "$label" "$OUT/$file.json"
    echo "  process $(python3 -c "import time; print(f'{time.time()-$s:.1f}')") s; cuDNN graph builds: $(grep -c 'cuDNN SDPA graph' "$OUT/$file.err"), their ms: $(grep -o 'built in [0-9.]*' "$OUT/$file.err" | awk '{s+=$3} END {print s+0}')"
  else
    echo "$label failed: $(tail -3 "$OUT/$file.err")"
  fi
}
run "defaults" first -- --ctx "$CONTEXTS" --repeat 3 --n-decode 8
run "--chunk 512 (the old default)" first-512 -- --ctx "$CONTEXTS" --repeat 2 --n-decode 8 --chunk 512
for c in ${LONG_CONTEXTS//,/ }; do
  run "uncapped $c" long-$c -- --ctx "$c" --n-decode 8
  run "24GiB $c" long-cap-$c -- --ctx "$c" --n-decode 8 --gpu-mem 24GiB
done
echo "total: $(( $(date +%s) - t0 )) s"
