#!/usr/bin/env bash
# The benchmark of ../shared/BENCH.md on the GPU machine, in stages that each fit its 10-minute
# command: headinfer with its DEFAULT flags (no --chunk, no tuning), the floors, the transformers
# peers (bench/peers.py: default, offloaded, static cache + torch.compile) and llama.cpp
# (llama-batched-bench -npl 1 -fa on -ngl 99 on an f16 GGUF of the same shape with random weights),
# all joined by bench/report.py into one results JSON (card, commands, commit) with its Markdown
# table, PNG and README section, copied to $OUT after every stage.
#
# Prepare here (the dev machine), once:
#   scripts/gpu_check.sh --prepare      # headinfer's build deps, cudnn-frontend -> .carry/
#   bench/llamacpp_prepare.sh           # trimmed llama.cpp + llama3 tokenizer -> .carry/llamacpp.tar.gz
# then, on the GPU machine with carry [".carry"], consecutive calls on the same warm machine:
#   STAGE=build bench/run_gpu.sh        # headinfer (CUDA, the card's arch) and llama-batched-bench built
#                                       # side by side, then the GGUF written (~16 GB); H100: 3.5 min
#   STAGE=quick bench/run_gpu.sh        # 8K: first and warm prefill, decode; 16K with the KV on the host;
#                                       # floors; H100: ~3 min (a second call finishes what the budget cut)
#   STAGE=long  bench/run_gpu.sh        # 32K/128K uncapped and under 24 GiB; H100: ~3.5 min
#   STAGE=bench bench/run_gpu.sh        # quick and long in one call: every figure and every peer of
#                                       # the report from one command (H100, 2026-12-06: the steps
#                                       # took ~5.5 min in all; the estimates below are those times
#                                       # with a margin, the build ~3.5 min)
# Every step of a stage is skipped once done (its part is kept in $STATE while the machine is
# warm), and a stage stops before a step that would cross STAGE_BUDGET seconds: call the same
# stage again to finish it. STAGE=report rebuilds the report from the parts; STAGE=all runs
# build, quick, long in one call (only where no command limit applies).
#
# Knobs: SHAPE [llama3-8b], N_DECODE [32], STATE [build-bench: parts, GGUF, logs],
#   STAGE_BUDGET [560 s], FORCE=1 (redo done steps of the stage), RETRY=1 (redo failed ones),
#   SKIP (space-separated step names to leave out, e.g. "tf-8k-static"), EXTRA (space-separated optional
#   steps: hi-8k-cap tf-128k-offloaded tf-128k-static), LLAMACPP_FLAGS (extra flags for every
#   llama-batched-bench run, e.g. "-ub 2048"), HI=path (a headinfer already built for this card),
#   BUILD_ONLY=1 (build headinfer only and stop: bench/long_run.sh uses it), COMMIT (the commit the
#   report names; default: the copy's own, "-dirty" when its tree differs).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPS=${DEPS:-$ROOT/.carry/deps/usr}
OUT=${OUT:-$ROOT/out}
STAGE=${STAGE:-}
SHAPE=${SHAPE:-llama3-8b}
N_DECODE=${N_DECODE:-32}
STATE=${STATE:-$ROOT/build-bench}
STAGE_BUDGET=${STAGE_BUDGET:-560}
EXTRA=" ${EXTRA:-} "
LLAMACPP_FLAGS=${LLAMACPP_FLAGS:-}
HI=${HI:-$ROOT/build-gpu/src/cli/headinfer}
LCPP_DIR=${LCPP_DIR:-$ROOT/build-llamacpp}
GGUF=$STATE/$SHAPE-f16.gguf
T0=$(date +%s)
[[ -n "${BUILD_ONLY:-}" ]] && STAGE=build-only  # bench/long_run.sh: build headinfer, nothing else
case "$STAGE" in build | quick | long | bench | report | all | build-only) ;; *)
  echo "error: give STAGE=build, quick, long, bench, report or all (see the top of $0)" >&2; exit 1 ;; esac
mkdir -p "$OUT" "$STATE/parts" "$STATE/logs"
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
echo "card: $GPU (sm_$ARCH); stage $STAGE; parts in $STATE/parts"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv >"$STATE/parts/gpu.csv"

export PKG_CONFIG_PATH=$DEPS/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export LD_LIBRARY_PATH=$DEPS/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
CUDNN_ROOT=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null || true)
[[ -n "$CUDNN_ROOT" ]] && export LD_LIBRARY_PATH=$CUDNN_ROOT/lib:$LD_LIBRARY_PATH

# --- steps -------------------------------------------------------------------------------------
# step NAME EST_SECONDS FUNCTION [ARGS...]: runs FUNCTION unless NAME is done (or FORCE=1), or
# unless its estimate would take the stage past STAGE_BUDGET (then the stage says to call again).
PENDING=0
step() {
  local name=$1 est=$2
  shift 2
  if [[ " ${SKIP:-} " == *" $name "* ]]; then echo "[$name] skipped (SKIP)"; return; fi
  if [[ -f "$STATE/parts/$name.done" && -z "${FORCE:-}" ]]; then echo "[$name] done earlier"; return; fi
  if [[ -f "$STATE/parts/$name.failed" && -z "${FORCE:-}${RETRY:-}" ]]; then
    echo "[$name] failed earlier (RETRY=1 to run it again): $(tail -1 "$STATE/logs/$name.log" 2>/dev/null)"; return; fi
  local elapsed=$(($(date +%s) - T0))
  if ((elapsed + est > STAGE_BUDGET)); then
    echo "[$name] not started: ${elapsed} s used + est. ${est} s > ${STAGE_BUDGET} s; call STAGE=$STAGE again"
    PENDING=1
    return
  fi
  echo "[$name] start at +${elapsed} s (est. ${est} s)"
  local s0=$(date +%s)
  rm -f "$STATE/parts/$name.failed"
  local rc=0
  "$@" || rc=$?
  if ((rc == 0)); then
    touch "$STATE/parts/$name.done"
    echo "[$name] done in $(($(date +%s) - s0)) s"
  elif ((rc == 124)); then  # stopped at the stage's budget: neither done nor failed
    echo "[$name] stopped at the stage budget after $(($(date +%s) - s0)) s; call STAGE=$STAGE again (builds resume)"
    PENDING=1
  else
    touch "$STATE/parts/$name.failed"
    echo "[$name] FAILED after $(($(date +%s) - s0)) s (log: $STATE/logs/$name.log, copied to \$OUT)"
    tail -5 "$STATE/logs/$name.log" 2>/dev/null || true
  fi
}
plan() {  # prints the stage's steps and estimates before running them
  local total=0 line=""
  while (($#)); do
    [[ ( -f "$STATE/parts/$1.done" || -f "$STATE/parts/$1.failed" && -z "${RETRY:-}" ) && -z "${FORCE:-}" ]] ||
      { total=$((total + $2)); line+=" $1(~$2s)"; }
    shift 2
  done
  echo "stage $STAGE: to run:${line:- nothing} -> est. ${total} s (budget ${STAGE_BUDGET} s)"
}
left() {  # seconds left in the stage's budget, at least 1 (timeout 0 would mean no limit)
  local l=$((STAGE_BUDGET - ($(date +%s) - T0)))
  echo $((l > 1 ? l : 1))
}

build_headinfer() {  # a timeout (124) leaves the build folder to resume from
  [[ -x "$HI" && "$HI" != "$ROOT/build-gpu/src/cli/headinfer" ]] && return 0
  cmake -S "$ROOT" -B "$ROOT/build-gpu" -DCMAKE_BUILD_TYPE=Release -DHEADINFER_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DCMAKE_PREFIX_PATH="$DEPS" -DHEADINFER_CUDNN_ROOT="$CUDNN_ROOT" \
    -DHEADINFER_CUDNN_FRONTEND_INCLUDE="${CUDNN_FE:-$ROOT/.carry/cudnn_frontend/include}" >"$STATE/logs/build-hi.log" 2>&1 &&
    timeout "$(left)" cmake --build "$ROOT/build-gpu" --target headinfer -j "$(nproc)" >>"$STATE/logs/build-hi.log" 2>&1
}
build_llamacpp() {
  CUDA_ARCH=$ARCH GGML_CUDA=ON LLAMACPP_DIR=$LCPP_DIR JOBS=$(nproc) timeout "$(left)" "$ROOT/bench/llamacpp_build.sh" \
    >"$STATE/logs/build-llamacpp.log" 2>&1
}
build_both() {  # side by side: nvcc-bound both, and the two link steps overlap the other's compiles
  local rc=0
  { build_headinfer; echo $? >"$STATE/logs/build-hi.rc"; } &
  { build_llamacpp; echo $? >"$STATE/logs/build-llamacpp.rc"; } &
  wait
  cat "$STATE/logs/build-hi.rc" "$STATE/logs/build-llamacpp.rc" >"$STATE/logs/build.log"
  local hi_rc lc_rc
  hi_rc=$(cat "$STATE/logs/build-hi.rc") lc_rc=$(cat "$STATE/logs/build-llamacpp.rc")
  grep -E "built in|configured in" "$STATE/logs/build-llamacpp.log" || true
  if [[ $hi_rc == 124 || $lc_rc == 124 ]]; then
    echo "build: headinfer exit $hi_rc, llama.cpp exit $lc_rc (124: stopped at the budget)"
    [[ $hi_rc == 0 || $hi_rc == 124 ]] && [[ $lc_rc == 0 || $lc_rc == 124 ]] && return 124
  fi
  [[ $hi_rc == 0 ]] || { grep -E "error" "$STATE/logs/build-hi.log" | head; rc=1; }
  [[ $lc_rc == 0 ]] || { tail -20 "$STATE/logs/build-llamacpp.log"; rc=1; }
  return $rc
}
write_gguf() {
  PYTHONPATH=$LCPP_DIR/llama.cpp/gguf-py python3 "$ROOT/bench/make_gguf.py" --shape "$SHAPE" \
    --tokenizer "$LCPP_DIR/llama.cpp/llama3-tokenizer.json" -o "$GGUF" >"$STATE/logs/gguf.log" 2>&1
  cat "$STATE/logs/gguf.log"
}

# hi NAME LABEL FLAGS...: one `headinfer bench` process with default flags plus FLAGS. Repeated
# contexts (--ctx 8K,8K,8K) measure the process's first prefill, then warm ones (report.py).
hi() {
  local name=$1 label=$2
  shift 2
  local cmd=("$HI" bench --shape "$SHAPE" --device cuda --n-decode "$N_DECODE" --json "$@")
  echo "${cmd[*]}" >"$STATE/parts/$name.cmd"
  echo "$label" >"$STATE/parts/$name.label"
  timeout "$(left)" "${cmd[@]}" >"$STATE/parts/$name.hi.json" 2>"$STATE/logs/$name.log" || {
    local rc=$?; rm -f "$STATE/parts/$name.hi.json"; return $rc; }
  head -c 400 "$STATE/parts/$name.hi.json"; echo
}
# tf NAME PEERS_FLAGS...: one bench/peers.py process (one model, several configurations).
tf() {
  local name=$1
  shift
  local cmd=(python3 "$ROOT/bench/peers.py" --shape "$SHAPE" --n-decode "$N_DECODE" "$@")
  echo "${cmd[*]}" >"$STATE/parts/$name.cmd"
  timeout "$(left)" "${cmd[@]}" >"$STATE/parts/$name.tf.json" 2>"$STATE/logs/$name.log" || {
    local rc=$?; rm -f "$STATE/parts/$name.tf.json"; return $rc; }
  { grep -v -i warn "$STATE/logs/$name.log" || true; } | cut -c1-300 | tail -8
}
# lcpp NAME TIMEOUT FLAGS...: one llama-batched-bench process; its JSONL rows are the part.
lcpp() {
  local name=$1 limit=$2 rc=0
  shift 2
  local bin=$LCPP_DIR/${LCPP_BUILD:-build-cuda$ARCH}/bin/llama-batched-bench
  [[ -x "$bin" && -f "$GGUF" ]] || { echo "llama.cpp not built or no GGUF: run STAGE=build" >"$STATE/logs/$name.log"; return 1; }
  local at_budget=0
  ((limit < $(left))) || { limit=$(left); at_budget=1; }
  # shellcheck disable=SC2086
  local cmd=("$bin" -m "$GGUF" -npl 1 -fa on -ngl 99 -ntg "$N_DECODE" --output-format jsonl $LLAMACPP_FLAGS "$@")
  echo "${cmd[*]}" >"$STATE/parts/$name.cmd"
  # batched-bench's jsonl mode logs nothing else: its version from --version, its GPU memory
  # sampled by nvidia-smi every 200 ms (the process's peak, CUDA context included)
  "$bin" --version 2>&1 | grep -a "version" | head -1 >"$STATE/parts/$name.info" || true
  local base smi
  base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$STATE/logs/$name.smi" 2>/dev/null &
  smi=$!
  timeout "$limit" "${cmd[@]}" >"$STATE/logs/$name.log" 2>&1 || rc=$?
  kill "$smi" 2>/dev/null || true
  wait "$smi" 2>/dev/null || true
  echo "gpu_used_mib: $(sort -n "$STATE/logs/$name.smi" | tail -1) (baseline $base)" >>"$STATE/parts/$name.info"
  grep -a '^{"n_kv_max"' "$STATE/logs/$name.log" >"$STATE/parts/$name.lcpp.jsonl" || true
  cat "$STATE/parts/$name.info" "$STATE/parts/$name.lcpp.jsonl"
  [[ $rc -eq 0 ]] || { echo "llama-batched-bench exit ${rc} (124: timed out after $limit s)" >>"$STATE/parts/$name.info"
    ((rc == 124 && at_budget)) && return 124
    return 1; }
}

report() {
  local commit
  # The device tool copies the working tree, whose .git may carry another HEAD than the tree's
  # commit (2026-12-06: the report named the session's base commit): "-dirty" marks a tree that
  # differs from its HEAD; pass COMMIT=<sha> (the dev box's HEAD) to name the right one.
  commit=${COMMIT:-$(git -C "$ROOT" describe --always --dirty --abbrev=7 2>/dev/null || echo unknown)}
  python3 "$ROOT/bench/report.py" --parts "$STATE/parts" --out-dir "$OUT/results" --shape "$SHAPE" \
    --commit "$commit" --command "bench/run_gpu.sh (STAGE=build, quick, long; SHAPE=$SHAPE N_DECODE=$N_DECODE)" \
    --readme-section "$OUT/README-perf.md" >"$STATE/logs/report.log" 2>&1 ||
    { tail -5 "$STATE/logs/report.log"; return 1; }
  cat "$OUT"/results/*.md
}

# --- stages ------------------------------------------------------------------------------------
CTX_FLOORS=8192,16384,32768,131072
# Warm prefills: `bench --repeat N` where bench has it (one engine, N prefills of each context),
# else the same context repeated in one process (a fresh engine per context, same process).
if "$HI" bench --help 2>/dev/null | grep -q -- '--repeat'; then
  CTX_8K=(--ctx 8K --repeat 3) CTX_LONG=(--ctx 128K,32K --repeat 2)
else
  CTX_8K=(--ctx 8K,8K,8K) CTX_LONG=(--ctx 32K,128K,128K)
fi
stage_build() {
  plan build 300 gguf 30
  step build 300 build_both
  [[ -f "$STATE/parts/build.done" ]] && step gguf 30 write_gguf
  return 0
}
stage_quick() {
  plan hi-8k 25 hi-16k-streamed 15 hi-16k-hybrid 15 tf-8k 45 tf-8k-static 70 lcpp-8k 15 lcpp-16k-nkvo 30
  # first prefill of the process, then two warm ones, at 8K; defaults, uncapped
  step hi-8k 25 hi hi-8k "headinfer (defaults)" "${CTX_8K[@]}"
  [[ $EXTRA == *" hi-8k-cap "* ]] && step hi-8k-cap 45 hi hi-8k-cap "headinfer (defaults, 24 GiB cap)" --ctx 8K,8K --gpu-mem 24GiB
  # KV on the host at 16K, beside llama.cpp -nkvo
  step hi-16k-streamed 15 hi hi-16k-streamed "headinfer (24 GiB cap, all streamed)" --ctx 16K --gpu-mem 24GiB --offload all
  step hi-16k-hybrid 15 hi hi-16k-hybrid "headinfer (24 GiB cap, hybrid)" --ctx 16K --gpu-mem 24GiB --offload all --hybrid auto
  # transformers at 8K: default first (the process's first generate), then the rest; floors after.
  # static cache + torch.compile in a process of its own: its compile time must not cost the others.
  step tf-8k 45 tf tf-8k --ctx 8192 --runs 3 --configs default,offloaded,default@24 --floors --floor-ctx "$CTX_FLOORS"
  step tf-8k-static 70 tf tf-8k-static --ctx 8192 --runs 3 --configs static-compile
  # llama.cpp: the first row follows only batched-bench's own 16-token warm-up; three timed rows
  step lcpp-8k 15 lcpp lcpp-8k 120 -c 8448 -npp 8192,8192,8192,8192
  step lcpp-16k-nkvo 30 lcpp lcpp-16k-nkvo 240 -nkvo -c 16640 -npp 16384
  return 0
}
stage_long() {
  plan hi-128k 50 hi-128k-cap 35 hi-128k-streamed 40 hi-128k-hybrid 35 tf-128k 50 lcpp-long 75
  step hi-128k 50 hi hi-128k "headinfer (defaults)" "${CTX_LONG[@]}"
  step hi-128k-cap 35 hi hi-128k-cap "headinfer (defaults, 24 GiB cap)" --ctx 128K --gpu-mem 24GiB
  step hi-128k-streamed 40 hi hi-128k-streamed "headinfer (24 GiB cap, all streamed)" --ctx 128K --gpu-mem 24GiB --offload all
  step hi-128k-hybrid 35 hi hi-128k-hybrid "headinfer (24 GiB cap, hybrid)" --ctx 128K --gpu-mem 24GiB --offload all --hybrid auto
  # one warm-up generate (the first call) and one timed, at 128K; under the cap it runs out of memory
  step tf-128k 50 tf tf-128k --ctx 131072 --runs 1 --configs default,default@24
  step lcpp-long 75 lcpp lcpp-long 300 -c 131328 -npp 32768,131072,131072
  [[ $EXTRA == *" tf-128k-offloaded "* ]] && step tf-128k-offloaded 200 tf tf-128k-offloaded --ctx 131072 --runs 1 \
    --n-decode 4 --configs offloaded
  [[ $EXTRA == *" tf-128k-static "* ]] && step tf-128k-static 200 tf tf-128k-static --ctx 131072 --runs 1 \
    --configs static-compile
  return 0
}

if [[ $STAGE == build-only ]]; then
  build_headinfer || { grep -E "error" "$STATE/logs/build-hi.log" | head; exit 1; }
  echo "built $HI"
  exit 0
fi
if [[ $STAGE != build && $STAGE != report && ! -x "$HI" ]]; then
  echo "error: $HI: not built (call STAGE=build first, on the same warm machine)" >&2
  exit 1
fi
case "$STAGE" in
  build) stage_build ;;
  quick) stage_quick ;;
  long) stage_long ;;
  bench) stage_quick; stage_long ;;
  all) STAGE_BUDGET=100000; stage_build; stage_quick; stage_long ;;
  report) ;;
esac
[[ $STAGE == build ]] || report || echo "report failed: $STATE/logs/report.log"
mkdir -p "$OUT/bench-logs" && cp "$STATE"/logs/*.log "$OUT/bench-logs/" 2>/dev/null || true
tar czf "$OUT/bench-parts.tar.gz" -C "$STATE" parts
echo "stage $STAGE finished in $(($(date +%s) - T0)) s$( ((PENDING)) && echo "; steps left: call STAGE=$STAGE again")"
