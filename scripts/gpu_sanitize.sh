#!/usr/bin/env bash
# compute-sanitizer over the CUDA pipeline (issue 15), on the GPU machine: memcheck (with leak
# check), racecheck and synccheck, each over
#   ops:      cuda_ops_tests, filtered to a subset that runs in minutes under the tools
#             ($SANITIZE_FILTER; the default leaves out the long 1500-token golden runs, the
#             1500-token placement chunks, the bandwidth report and the fault tests that make a
#             device per refused allocation; SANITIZE_FILTER='*' runs everything)
#   generate: an offloaded `headinfer generate` on stories260k: every head block streamed
#             (--offload all, groups of one kv head), hybrid auto, prefill chunks of 7 tokens,
#             16 tokens generated
# and writes $OUT/sanitize.json: per tool and target the sanitizer's error count, racecheck's
# warnings, exit status, seconds and whether the time limit cut it short, plus the card.
# racecheck runs the op tests one per process (RACECHECK_PER_TEST=0: all in one) and reports
# hazards, clean tests, tool failures and tests cut by the time limit.
# Builds like scripts/gpu_check.sh (same carry: run `scripts/gpu_check.sh --prepare` on the dev
# box first, carry .carry). Runs the tools in the order given (default: all three), each target
# limited to $SANITIZE_SECONDS (default 150) so that one call stays inside a 10-minute command:
#     scripts/gpu_sanitize.sh                      # build + memcheck racecheck synccheck
#     scripts/gpu_sanitize.sh memcheck             # one tool (build-gpu reused on a warm machine)
# Exit status 1 when any report was counted or a run failed; 0 otherwise.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT"
TOOLS=("$@")
[[ ${#TOOLS[@]} -gt 0 ]] || TOOLS=(memcheck racecheck synccheck)
LIMIT=${SANITIZE_SECONDS:-150}
FILTER=${SANITIZE_FILTER:-'CudaTest.*:*CudaAttentionTest.*:*CudaGroupedAttentionTest.*:Chunks/GpuPlacements.*/chunk1:Chunks/GpuPlacements.*/chunk97:-CudaTest.TinyModelsMatchCpu:CudaTest.LinkBandwidthReport:CudaTest.*LeaksNothing'}

# The CUDA toolkit's compute-sanitizer (bin/ or its own folder); checked before minutes of building.
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
if [[ -z "$SAN" || ! -x "$SAN" ]]; then
  echo '{"error":"compute-sanitizer not found on this machine"}' >"$OUT/sanitize.json"
  echo "gpu_sanitize.sh: compute-sanitizer not found" >&2
  exit 1
fi
HEADINFER_BUILD_ONLY=1 "$ROOT/scripts/gpu_check.sh" || exit 1
DEPS=$ROOT/.carry/deps/usr
export LD_LIBRARY_PATH=$DEPS/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
CUDNN_ROOT=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null || true)
[[ -n "$CUDNN_ROOT" ]] && export LD_LIBRARY_PATH=$CUDNN_ROOT/lib:$LD_LIBRARY_PATH
export HEADINFER_TESTDATA=$ROOT/.carry/testdata

ops=("$ROOT/build-gpu/tests/cuda/cuda_ops_tests" --gtest_filter="$FILTER")
gen=("$ROOT/build-gpu/src/cli/headinfer" generate -m "$HEADINFER_TESTDATA/models/stories260k" -p "Once upon a time"
     -n 16 --ignore-eos --device cuda --offload all --kv-group 1 --hybrid auto --chunk 7 --json)
[[ -x "${gen[0]}" ]] || gen[0]=$(find "$ROOT/build-gpu" -name headinfer -type f -perm -u+x | head -1)

rows=()
status=0
for tool in "${TOOLS[@]}"; do
  extra=()
  [[ $tool == memcheck ]] && extra=(--leak-check full)
  # racecheck: our own kernels only (names containing $RACECHECK_KERNELS, default "headinfer", the
  # namespace of every kernel of ours). NVIDIA's closed kernels (cuBLASLt's nvjet GEMMs, cuDNN's
  # SDPA) we can neither read nor fix: on an H100 (2026-12-06) racecheck reported 48 shared-memory
  # hazards inside a split-K nvjet kernel, and with that kernel excluded by name instead the tool
  # failed inside it ("Internal Sanitizer Error: ... failed to handle a hardware exception").
  # RACECHECK_KERNELS='' checks every kernel.
  if [[ $tool == racecheck && -n ${RACECHECK_KERNELS-headinfer} ]]; then
    extra+=(--kernel-name "kns=${RACECHECK_KERNELS-headinfer}")
  fi
  for target in ops generate; do
    log=$OUT/sanitize_${tool}_${target}.log
    # racecheck over the op tests: one test per process ($SANITIZE_TEST_SECONDS each, default 40,
    # within $LIMIT in all), because the tool's failure inside a cuBLASLt kernel (above) leaves the
    # device unusable for every later test of the process. Tool failures are counted apart from
    # hazards, and make the status 1 as well.
    if [[ $tool == racecheck && $target == ops && ${RACECHECK_PER_TEST:-1} == 1 ]]; then
      mapfile -t names < <("${ops[0]}" --gtest_filter="$FILTER" --gtest_list_tests |
        awk '/^[^ ]/ {suite = $1} /^  / {print suite $1}' | grep -v DISABLED_)
      t0=$(date +%s)
      errors=0 warnings=0 clean=0 failed=() cut=() other=()
      : >"$log"
      for name in "${names[@]}"; do
        left=$(( LIMIT - ($(date +%s) - t0) ))
        (( left > 5 )) || { cut+=("$name"); continue; }
        one=$OUT/racecheck_one.log
        rc=0
        timeout --signal=INT "$(( left < ${SANITIZE_TEST_SECONDS:-40} ? left : ${SANITIZE_TEST_SECONDS:-40} ))" \
          "$SAN" --tool racecheck "${extra[@]}" --print-limit 50 "${ops[0]}" --gtest_filter="$name" >"$one" 2>&1 || rc=$?
        { echo "### $name (exit $rc)"; cat "$one"; } >>"$log"
        e=$(sed -nE 's/.*RACECHECK SUMMARY: .*\(([0-9]+) errors?, ([0-9]+) warnings?\).*/\1/p' "$one" | tail -1)
        w=$(sed -nE 's/.*RACECHECK SUMMARY: .*\(([0-9]+) errors?, ([0-9]+) warnings?\).*/\2/p' "$one" | tail -1)
        if grep -q "Internal Sanitizer Error" "$one"; then failed+=("$name")
        elif [[ $rc -eq 124 || $rc -eq 130 ]]; then cut+=("$name")
        elif [[ $rc -ne 0 || -z "$e" ]]; then other+=("$name")
        else errors=$((errors + e)); warnings=$((warnings + w)); [[ $e == 0 ]] && clean=$((clean + 1)); fi
      done
      rm -f "$OUT/racecheck_one.log"
      secs=$(( $(date +%s) - t0 ))
      echo "racecheck ops (one test per process): hazards errors=$errors warnings=$warnings; ${clean} of ${#names[@]} tests clean; tool failures ${#failed[@]}: ${failed[*]}; cut ${#cut[@]}: ${cut[*]}; other ${#other[@]}: ${other[*]} (${secs}s)"
      list() { local IFS=,; local q=(); for x in "$@"; do q+=("\"$x\""); done; echo "[${q[*]}]"; }
      rows+=("{\"tool\":\"racecheck\",\"target\":\"ops\",\"per_test\":true,\"errors\":$errors,\"warnings\":$warnings,\"tests\":${#names[@]},\"clean\":$clean,\"tool_failures\":$(list "${failed[@]}"),\"cut\":$(list "${cut[@]}"),\"other\":$(list "${other[@]}"),\"seconds\":$secs}")
      if (( errors != 0 || ${#failed[@]} + ${#cut[@]} + ${#other[@]} > 0 )); then status=1; fi
      continue
    fi
    if [[ $target == ops ]]; then cmd=("${ops[@]}"); else cmd=("${gen[@]}"); fi
    t0=$(date +%s)
    rc=0
    timeout --signal=INT "$LIMIT" "$SAN" --tool "$tool" "${extra[@]}" --print-limit 50 "${cmd[@]}" >"$log" 2>&1 || rc=$?
    secs=$(( $(date +%s) - t0 ))
    errors=$(sed -nE 's/.*ERROR SUMMARY: ([0-9]+) error.*/\1/p' "$log" | tail -1)
    # racecheck sums up as "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)"
    [[ -n "$errors" ]] || errors=$(sed -nE 's/.*RACECHECK SUMMARY: .*\(([0-9]+) errors?,.*/\1/p' "$log" | tail -1)
    warnings=$(sed -nE 's/.*RACECHECK SUMMARY: .*\(([0-9]+) errors?, ([0-9]+) warnings?\).*/\2/p' "$log" | tail -1)
    timed_out=false
    [[ $rc -eq 124 || $rc -eq 130 ]] && timed_out=true
    tests=$(grep -E "^\[  PASSED  \]|^\[  FAILED  \]" "$log" | tr '\n' ' ')
    echo "$tool $target: errors=${errors:-?} warnings=${warnings:-0} rc=$rc ${secs}s timed_out=$timed_out $tests"
    grep -E "^========= (Invalid|Race|Barrier|Leaked|Program hit|Error)" "$log" | sort | uniq -c | head -10
    rows+=("{\"tool\":\"$tool\",\"target\":\"$target\",\"errors\":${errors:-null},\"warnings\":${warnings:-0},\"exit\":$rc,\"seconds\":$secs,\"timed_out\":$timed_out,\"gtest\":\"${tests% }\"}")
    if [[ -z "$errors" || "$errors" != 0 || ( $rc -ne 0 && $timed_out == false ) ]]; then status=1; fi
  done
done

gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
sanv=$("$SAN" --version | tail -1)
{
  printf '{"gpu":"%s","compute_sanitizer":"%s","ops_filter":"%s","generate":"%s","racecheck_kernels":"%s","runs":[' \
    "$gpu" "$sanv" "$FILTER" "${gen[*]:1}" "${RACECHECK_KERNELS-headinfer}"
  (IFS=,; printf '%s' "${rows[*]}")
  printf ']}\n'
} >"$OUT/sanitize.json"
cat "$OUT/sanitize.json"
exit $status
