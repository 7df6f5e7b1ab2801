#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang, ASan + UBSan, build-fuzz/) and runs each for
# SECONDS (default 60) from its committed seed corpus (tests/fuzz/corpus/<target>/) plus what
# earlier runs found (build-fuzz/corpus/<target>/). Fails on the first crash, leak, timeout (10 s
# for one input) or out-of-memory (2 GiB); the input that did it is left in
# build-fuzz/artifacts/<target>/ and the last lines of its log are printed. Prints one line per
# target: executions, coverage (edges) and features reached. CI runs it with 60 s; run it longer
# on demand:   scripts/fuzz.sh 3600            (an hour each)
#              scripts/fuzz.sh 600 config       (one target)
# Reproduce a finding: build-fuzz/tests/fuzz/fuzz_<target> build-fuzz/artifacts/<target>/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
PER_TARGET=${1:-60}
shift || true
ALL=(safetensors config tokenizer_load tokenizer_codec options kv_snapshot)
[[ $# -gt 0 ]] && TARGETS=("$@") || TARGETS=("${ALL[@]}")

scripts/install-deps.sh clang libclang-rt-14-dev  # Debian 12's clang and libFuzzer
CXX_FUZZ=${CXX_FUZZ:-$(command -v clang++ || command -v clang++-14 || true)}
[[ -n "$CXX_FUZZ" ]] || { echo "fuzz.sh: clang++ not found (Debian: apt-get install clang)" >&2; exit 1; }
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)

start=$(date +%s)
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="$CXX_FUZZ" \
  -DHEADINFER_FUZZ=ON -DHEADINFER_TESTS=OFF -DHEADINFER_CUDA=OFF "${launcher[@]}" >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target "${TARGETS[@]/#/fuzz_}"
echo "fuzz build: $(( $(date +%s) - start )) s"

summary=build-fuzz/fuzz_summary.txt
: >"$summary"
for t in "${TARGETS[@]}"; do
  mkdir -p "build-fuzz/corpus/$t" "build-fuzz/artifacts/$t"
  log=build-fuzz/fuzz_$t.log
  t0=$(date +%s)
  rc=0
  # The first corpus folder receives new inputs; the committed seeds stay untouched.
  "build-fuzz/tests/fuzz/fuzz_$t" "build-fuzz/corpus/$t" "tests/fuzz/corpus/$t" \
    -max_total_time="$PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="build-fuzz/artifacts/$t/" >"$log" 2>&1 || rc=$?
  done_line=$(grep -E "^#[0-9]+.*DONE" "$log" | tail -1 || true)
  execs=$(grep -E "stat::number_of_executed_units" "$log" | awk '{print $2}' || true)
  cov=$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$done_line")
  ft=$(sed -nE 's/.*ft: ([0-9]+).*/\1/p' <<<"$done_line")
  line="fuzz_$t: ${execs:-?} executions in $(( $(date +%s) - t0 )) s, cov ${cov:-?} edges, ft ${ft:-?}, corpus now $(ls "build-fuzz/corpus/$t" | wc -l) inputs (build-fuzz/corpus/$t), exit $rc"
  echo "$line" | tee -a "$summary"
  if [[ $rc -ne 0 ]]; then
    echo "fuzz.sh: fuzz_$t found a problem (log $log):" >&2
    grep -E "ERROR|SUMMARY|fuzz invariant|runtime error|terminate|what\(\)" "$log" | head -20 >&2 || true
    ls "build-fuzz/artifacts/$t" >&2
    exit 1
  fi
done
echo "fuzz.sh: no findings (summary in $summary)"
