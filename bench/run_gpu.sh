#!/usr/bin/env bash
# One call on the GPU machine: build headinfer for the card, measure the floors and the
# transformers peers (bench/peers.py), run `headinfer bench` under the 24 GiB cap and uncapped,
# and write bench/results/<date>-<gpu>.{json,md,png} (copied to $OUT too).
#
# Prepare here first (deps for the build, as scripts/gpu_check.sh --prepare), then call the
# device with carry [".carry"]:  bench/run_gpu.sh
# Knobs: CONTEXTS (default 8K,32K,128K), PEER_CONTEXTS (default 8192,131072), SHAPE (llama3-8b),
#        N_DECODE (32), SKIP_PEERS=1 to rerun only headinfer,
#        DECODE_ONLY_CONTEXTS (e.g. 512K,1M; default none): `--decode-only` runs of SHAPE under the cap,
#        every head streamed and hybrid, one process per context (a context the host cannot hold
#        fails alone), into the same results labelled decode-only,
#        BUILD_ONLY=1 to build build-gpu/src/cli/headinfer and stop (bench/long_run.sh uses it),
#        HI=path to use a headinfer already built for this card instead of building.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPS=${DEPS:-$ROOT/.carry/deps/usr}
OUT=${OUT:-$ROOT/out}
SHAPE=${SHAPE:-llama3-8b}
CONTEXTS=${CONTEXTS:-8K,32K,128K}
PEER_CONTEXTS=${PEER_CONTEXTS:-8192,131072}
N_DECODE=${N_DECODE:-32}
DECODE_ONLY_CONTEXTS=${DECODE_ONLY_CONTEXTS:-}
mkdir -p "$OUT"
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
echo "card: $GPU (sm_$ARCH)"

export PKG_CONFIG_PATH=$DEPS/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export LD_LIBRARY_PATH=$DEPS/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
CUDNN_ROOT=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null || true)
[[ -n "$CUDNN_ROOT" ]] && export LD_LIBRARY_PATH=$CUDNN_ROOT/lib:$LD_LIBRARY_PATH
if [[ -n "${HI:-}" && -x "${HI:-}" ]]; then
  echo "using the built $HI"
else
  cmake -S "$ROOT" -B "$ROOT/build-gpu" -DCMAKE_BUILD_TYPE=Release -DHEADINFER_CUDA=ON -DHEADINFER_TESTS=OFF \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DCMAKE_PREFIX_PATH="$DEPS" -DHEADINFER_CUDNN_ROOT="$CUDNN_ROOT" \
    -DHEADINFER_CUDNN_FRONTEND_INCLUDE="${CUDNN_FE:-$ROOT/.carry/cudnn_frontend/include}" \
    >"$OUT/bench-configure.log" 2>&1 || { tail -20 "$OUT/bench-configure.log"; exit 1; }
  cmake --build "$ROOT/build-gpu" --target headinfer -j "$(nproc)" >"$OUT/bench-build.log" 2>&1 ||
    { grep -E "error" "$OUT/bench-build.log" | head -20; exit 1; }
  HI=$ROOT/build-gpu/src/cli/headinfer
fi
if [[ -n "${BUILD_ONLY:-}" ]]; then echo "built $HI"; exit 0; fi

runs=()
bench() {  # label, file, extra flags...
  local label=$1 file=$2
  shift 2
  if "$HI" bench --shape "$SHAPE" --device cuda --n-decode "$N_DECODE" --json "$@" >"$OUT/$file" 2>"$OUT/$file.err"; then
    runs+=(--run "$label=$OUT/$file")
    echo "$label: $(head -c 600 "$OUT/$file")"
  else
    echo "$label failed: $(tail -3 "$OUT/$file.err")"
  fi
}
grep -E "cuDNN SDPA" "$OUT/bench-configure.log" || echo "cuDNN SDPA prefill: off"
CHUNK=${CHUNK:-8192}
bench "headinfer (uncapped)" hi-uncapped.json --ctx 8K --offload none --chunk "$CHUNK"
bench "headinfer (24 GiB cap)" hi-capped.json --ctx "$CONTEXTS" --gpu-mem 24GiB --chunk "$CHUNK"
bench "headinfer (24 GiB cap, all streamed)" hi-streamed.json --ctx "$CONTEXTS" --gpu-mem 24GiB --offload all --chunk "$CHUNK"
bench "headinfer (24 GiB cap, hybrid)" hi-hybrid.json --ctx "${HYBRID_CONTEXTS:-128K}" --gpu-mem 24GiB --offload all \
  --hybrid auto --chunk "$CHUNK"
# Decode-only: the KV is filled with random values instead of prefilled (bench says so in its JSON,
# report.py in its table). Runs sharing a label are joined by report.py.
for ctx in ${DECODE_ONLY_CONTEXTS//,/ }; do
  bench "headinfer (24 GiB cap, all streamed, decode-only)" "hi-decode-only-$ctx.json" --ctx "$ctx" --gpu-mem 24GiB \
    --offload all --decode-only
  bench "headinfer (24 GiB cap, hybrid, decode-only)" "hi-hybrid-decode-only-$ctx.json" --ctx "$ctx" --gpu-mem 24GiB \
    --offload all --hybrid auto --decode-only
done

if [[ -z "${SKIP_PEERS:-}" || ! -f "$OUT/peers.json" ]]; then
  python3 "$ROOT/bench/peers.py" --shape "$SHAPE" --ctx "$PEER_CONTEXTS" --n-decode 8 \
    >"$OUT/peers.json" 2>"$OUT/peers.log" || { tail -5 "$OUT/peers.log"; exit 1; }
fi
{ grep -v Warning "$OUT/peers.log" || true; } | tail -12  # an all-warning log must not stop the report
python3 "$ROOT/bench/report.py" --peers "$OUT/peers.json" "${runs[@]}" --out-dir "$ROOT/bench/results" \
  --shape "$SHAPE" --commit "${COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}" \
  --command "bench/run_gpu.sh (CONTEXTS=$CONTEXTS${DECODE_ONLY_CONTEXTS:+ DECODE_ONLY_CONTEXTS=$DECODE_ONLY_CONTEXTS})" | tee "$OUT/report-stem.txt"
stem=$(cat "$OUT/report-stem.txt")
cp "$stem".json "$stem".md "$OUT/"
[[ -f "$stem.png" ]] && cp "$stem.png" "$OUT/"
cat "$stem.md"
