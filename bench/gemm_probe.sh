#!/usr/bin/env bash
# Builds and runs bench/gemm_probe.cu on the GPU machine: one JSON line per linear shape and output
# dtype, into $OUT/gemm-probe.jsonl (see the .cu for what it measures). About 30 s on an H100.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT" "$ROOT/build-probe"
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
nvcc -O2 -std=c++17 -arch=sm_"$ARCH" "$ROOT/bench/gemm_probe.cu" -lcublasLt -o "$ROOT/build-probe/gemm_probe"
"$ROOT/build-probe/gemm_probe" "${CANDIDATES:-12}" "${REPS:-10}" >"$OUT/gemm-probe.jsonl"
python3 - "$OUT/gemm-probe.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    diff = sum(1 for c in r["candidates"][1:] if not c["same_bits"])
    print(f'{r["shape"]:14} T={r["tokens"]:5} out={r["out"]:5} in={r["in"]:5} {r["out_dtype"]:4} beta={r["beta"]:.0f}: '
          f'first {r["first_ms"]:.3f} ms ({r["first_tflops"]:.0f} TFLOP/s), best {r["best_ms"]:.3f} '
          f'({r["best_tflops"]:.0f}) #{r["best_index"]} of {len(r["candidates"])}, {diff} differ in bits')
PY
