#!/usr/bin/env bash
# Per-kernel GPU time of one prefill and of decode steps (issue 11), with Nsight Compute (the GPU
# machine has ncu, not nsys): gpu__time_duration of every kernel, summed by kernel name. Kernels
# run serialized under ncu, so launch gaps and overlap are not in these sums; compare the total
# with the wall time `headinfer bench` reports to see what the host adds.
# Usage on the GPU machine (after scripts/gpu_check.sh or run_gpu.sh BUILD_ONLY=1 built build-gpu):
#   bench/profile_ops.sh [CTX]      -> $OUT/ncu-prefill.csv, $OUT/ncu-decode.csv and a summary
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/out}
CTX=${1:-8K}
SHAPE=${SHAPE:-llama3-8b}
HI=${HI:-$ROOT/build-gpu/src/cli/headinfer}
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
[[ -n "$NCU" ]] || { echo "no ncu on this machine"; exit 1; }
prof() {  # name, bench flags...
  local name=$1; shift
  "$NCU" --metrics gpu__time_duration.sum --csv --print-units base --log-file "$OUT/ncu-$name.csv" \
    "$HI" bench --shape "$SHAPE" --device cuda --ctx "$CTX" --json "$@" >"$OUT/ncu-$name.json" 2>"$OUT/ncu-$name.err" ||
    { echo "ncu $name failed: $(tail -3 "$OUT/ncu-$name.err")"; return 0; }
  python3 - "$OUT/ncu-$name.csv" "$name" "${STEPS:-1}" <<'PY'
import csv, collections, sys
path, name, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [r for r in csv.reader(open(path)) if len(r) > 10]
head = rows[0]; rows = rows[1:]
ki, mi, vi = head.index("Kernel Name"), head.index("Metric Name"), head.index("Metric Value")
tot = collections.Counter(); cnt = collections.Counter()
for r in rows:
    if r[mi] != "gpu__time_duration.sum": continue
    k = r[ki].replace("(anonymous namespace)::", "").split("(")[0][:80]
    tot[k] += float(r[vi].replace(",", "")); cnt[k] += 1
all_ns = sum(tot.values())
print(f"{name}: {len(rows)} kernels, {all_ns/1e6:.2f} ms of kernel time" + (f" ({all_ns/1e6/steps:.3f} ms per step over {steps})" if steps > 1 else ""))
for k, ns in tot.most_common(22):
    print(f"  {ns/1e6:9.3f} ms {100*ns/all_ns:5.1f}%  x{cnt[k]:<5} {k}")
PY
}
prof prefill --n-decode 1 --no-graphs
STEPS=4 prof decode --decode-only --n-decode 4 --no-graphs
