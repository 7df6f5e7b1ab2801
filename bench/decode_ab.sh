#!/usr/bin/env bash
# Decode A/B in one call (issue 11): the working tree against a base commit, on the same card, in
# alternating order, with the floors measured in the same call. What a decode change needs before it
# lands: its CUDA tests on the card, and its ms per token beside the code it replaces.
#
# Here (the dev machine), once per base:
#   bench/decode_ab.sh --prepare [BASE]   # git archive of BASE (default HEAD~1) -> .carry/ab-base.tar.gz,
#                                         # its commit -> .carry/ab-base.txt
# then on the GPU machine, with carry [".carry"] (scripts/gpu_check.sh --prepare made the rest):
#   bench/decode_ab.sh                    # H100, 2026-12-07: both builds side by side 116 s, the
#                                         # candidate's cuda_ops_tests 41 s, then ~11 s a decode run
#                                         # (base, candidate and 4 variants at 8K and 128K, 2 rounds:
#                                         # 464 s in all), the floors 7 s
# Knobs: CTXS ("8192 131072"), ROUNDS (2), N_DECODE (32), SHAPE (llama3-8b), VARIANTS (extra runs of
# the candidate, each a space-free list of VAR=value joined by commas, e.g. "HEADINFER_PDL=0"),
# TESTS=0 (skip the CUDA tests), TEST_FILTER (a --gtest_filter for them, when device time is
# short), BASE=none (no base build: the knobs of VARIANTS against the candidate with none set, when
# the experiment is a knob; saves the base's build). Writes $OUT/decode-ab.{json,md} (ms per token
# per run, the means, the floors) and $OUT/decode-ab-logs.tar.gz (every log): three files, since
# the device tool brings back at most eight.
# A second run on the same machine (e.g. MODE=decode after MODE=prefill, OUT elsewhere) reuses both
# builds. MODE=prefill: the same A/B for prefill (`bench --repeat $REPEAT --n-decode 1`, REPEAT 3): each
# run records its first and warm prefill seconds (CTXS in tokens, e.g. "8192 131072").
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ "${1:-}" == "--prepare" ]]; then
  base=${2:-HEAD~1}
  sha=$(git -C "$ROOT" rev-parse --verify "$base^{commit}") || exit 1
  mkdir -p "$ROOT/.carry"
  git -C "$ROOT" archive --format=tar.gz --prefix=ab-base/ "$sha" -o "$ROOT/.carry/ab-base.tar.gz"
  echo "$sha" >"$ROOT/.carry/ab-base.txt"
  echo "base $sha -> .carry/ab-base.tar.gz ($(du -h "$ROOT/.carry/ab-base.tar.gz" | cut -f1))"
  exit 0
fi

OUT=${OUT:-$ROOT/out}
CTXS=${CTXS:-8192 131072}
ROUNDS=${ROUNDS:-2}
N_DECODE=${N_DECODE:-32}
SHAPE=${SHAPE:-llama3-8b}
VARIANTS=${VARIANTS:-}
MODE=${MODE:-decode}
REPEAT=${REPEAT:-3}
case $MODE in
  decode) BENCH_ARGS=(--decode-only --n-decode "$N_DECODE") ;;
  prefill) BENCH_ARGS=(--repeat "$REPEAT" --n-decode 1) ;;
  *) echo "error: MODE must be decode or prefill, not '$MODE'" >&2; exit 1 ;;
esac
DEPS=$ROOT/.carry/deps/usr
NO_BASE=0
[[ "${BASE:-}" == none ]] && NO_BASE=1
((NO_BASE)) || [[ -f "$ROOT/.carry/ab-base.tar.gz" ]] ||
  { echo "error: no .carry/ab-base.tar.gz: run bench/decode_ab.sh --prepare here first (or BASE=none)" >&2; exit 1; }
mkdir -p "$OUT/decode-ab"
T0=$(date +%s)
el() { echo $(($(date +%s) - T0)); }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/decode-ab/gpu.txt"
CUDNN_ROOT=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null || true)
export HEADINFER_TESTDATA=${HEADINFER_TESTDATA:-$ROOT/.carry/testdata}
export PKG_CONFIG_PATH=$DEPS/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export LD_LIBRARY_PATH=$DEPS/lib/x86_64-linux-gnu${CUDNN_ROOT:+:$CUDNN_ROOT/lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
BASE_DIR=$ROOT/build-ab/ab-base
# The base's build is kept for a second run in the same machine (another MODE): where build-ab holds
# this base already, its build is only brought up to date.
if ((NO_BASE)) || ! cmp -s "$ROOT/.carry/ab-base.txt" "$ROOT/build-ab/ab-base.txt"; then
  rm -rf "$ROOT/build-ab" && mkdir -p "$ROOT/build-ab"
  if ! ((NO_BASE)); then
    tar xzf "$ROOT/.carry/ab-base.tar.gz" -C "$ROOT/build-ab" && cp "$ROOT/.carry/ab-base.txt" "$ROOT/build-ab/"
  fi
fi
configure() {  # source dir
  cmake -S "$1" -B "$1/build-gpu" -DCMAKE_BUILD_TYPE=Release -DHEADINFER_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
    -DCMAKE_PREFIX_PATH="$DEPS" -DHEADINFER_CUDNN_ROOT="$CUDNN_ROOT" \
    -DHEADINFER_CUDNN_FRONTEND_INCLUDE="$ROOT/.carry/cudnn_frontend/include"
}
targets=(headinfer)
[[ "${TESTS:-1}" != 0 ]] && targets+=(cuda_ops_tests)
jobs=$(nproc)
cand_jobs=$((jobs * 2 / 3 + 1))  # the base builds beside it with the rest
((NO_BASE)) && cand_jobs=$jobs
{ configure "$ROOT" && cmake --build "$ROOT/build-gpu" --target "${targets[@]}" -j"$cand_jobs"; } \
  >"$OUT/decode-ab/build-candidate.log" 2>&1 &
cand_pid=$!
base_rc=0
if ((NO_BASE)); then
  wait $cand_pid; cand_rc=$?
  echo "build at $(el) s: candidate rc=$cand_rc, no base (BASE=none)"
else
  { configure "$BASE_DIR" && cmake --build "$BASE_DIR/build-gpu" --target headinfer -j$((jobs / 3 + 1)); } \
    >"$OUT/decode-ab/build-base.log" 2>&1 &
  base_pid=$!
  wait $cand_pid; cand_rc=$?
  wait $base_pid; base_rc=$?
  echo "builds at $(el) s: candidate rc=$cand_rc, base $(cat "$ROOT/.carry/ab-base.txt" 2>/dev/null) rc=$base_rc"
fi
grep -h -m1 "cuDNN SDPA prefill" "$OUT/decode-ab/build-candidate.log"
((cand_rc == 0 && base_rc == 0)) || { tail -5 "$OUT/decode-ab/build-candidate.log" "$OUT/decode-ab/build-base.log"; exit 1; }

if [[ "${TESTS:-1}" != 0 ]]; then
  timeout 300 "$ROOT/build-gpu/tests/cuda/cuda_ops_tests" ${TEST_FILTER:+--gtest_filter="$TEST_FILTER"} \
    >"$OUT/decode-ab/cuda-tests.log" 2>&1
  echo "cuda_ops_tests rc=$? at $(el) s: $(grep -E '^\[  (PASSED|FAILED)' "$OUT/decode-ab/cuda-tests.log" | tr '\n' ' ')"
  grep -E '^\[  FAILED  \] [A-Za-z]' "$OUT/decode-ab/cuda-tests.log" | head -20
fi

# One run: label, binary, env (comma-separated VAR=value or "-"), context -> a JSON line in runs.jsonl.
run() {
  local label=$1 bin=$2 envs=$3 ctx=$4 log
  log="$OUT/decode-ab/$label-$ctx-r$r.json"
  local -a e=()
  [[ "$envs" != "-" ]] && IFS=, read -ra e <<<"$envs"
  env "${e[@]}" timeout 180 "$bin" bench --shape "$SHAPE" --device cuda --ctx "$ctx" "${BENCH_ARGS[@]}" \
    --json >"$log" 2>"$log.err"
  python3 - "$label" "$envs" "$ctx" "$r" "$log" "$MODE" >>"$OUT/decode-ab/runs.jsonl" <<'PY'
import json, sys
label, envs, ctx, rnd, path, mode = sys.argv[1:]
row = {"label": label, "env": envs, "ctx": int(ctx), "round": int(rnd)}
try:
    res = json.load(open(path))["results"][0]
except Exception:  # a failed run is recorded as such
    res = {}
if mode == "prefill":
    row["prefill_first_s"] = res.get("prefill_seconds")
    row["prefill_warm_s"] = res.get("prefill_warm_seconds")
else:
    ms = res.get("decode_seconds_per_token")
    row["ms_per_token"] = None if ms is None else ms * 1e3
print(json.dumps(row))
PY
  tail -1 "$OUT/decode-ab/runs.jsonl"
}
rm -f "$OUT/decode-ab/runs.jsonl"
for ((r = 1; r <= ROUNDS; ++r)); do
  for ctx in $CTXS; do
    ((NO_BASE)) || run base "$BASE_DIR/build-gpu/src/cli/headinfer" - "$ctx"
    run candidate "$ROOT/build-gpu/src/cli/headinfer" - "$ctx"
    for v in $VARIANTS; do run "candidate[$v]" "$ROOT/build-gpu/src/cli/headinfer" "$v" "$ctx"; done
  done
done
echo "A/B at $(el) s"
timeout 120 python3 "$ROOT/bench/peers.py" --shape "$SHAPE" --ctx 8192 --floors --floor-ctx 8192 \
  >"$OUT/decode-ab/floors.json" 2>"$OUT/decode-ab/floors.err"
echo "floors rc=$? at $(el) s"
base_commit=none
((NO_BASE)) || base_commit=$(cat "$ROOT/.carry/ab-base.txt" 2>/dev/null)
python3 "$ROOT/bench/decode_ab_report.py" "$OUT/decode-ab" "$base_commit" \
  --json "$OUT/decode-ab.json" | tee "$OUT/decode-ab.md"
# The logs in one archive: the device tool brings back at most eight files from $OUT.
tar czf "$OUT/decode-ab-logs.tar.gz" -C "$OUT" decode-ab && rm -rf "$OUT/decode-ab"
