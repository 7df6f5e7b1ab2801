#!/usr/bin/env bash
# Encode throughput, headinfer vs Hugging Face tokenizers, single thread, same corpus and machine.
#   bench/tokenizer/run.sh [BUILD_DIR]   (default build; needs `pip install tokenizers`)
# Prints one JSON line per run; each HF line says whether HF produced exactly our ids.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
data=${HEADINFER_TESTDATA:-$root/../shared/testdata}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 "$root/bench/tokenizer/make_corpus.py" "$work/corpus.txt" --mb 10 >&2
grep -m1 "model name" /proc/cpuinfo >&2
for name in llama3 qwen2 llama2 mistral; do
  tokenizer="$data/tokenizers/$name/tokenizer.json"
  "$build/tests/tokenizer/tokenizer_bench" "$tokenizer" "$work/corpus.txt" 3 "$work/ids_$name.txt"
  python3 "$root/bench/tokenizer/bench_hf.py" "$tokenizer" "$work/corpus.txt" --passes 3 --check "$work/ids_$name.txt"
done
