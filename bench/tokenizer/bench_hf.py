#!/usr/bin/env python3
"""Hugging Face tokenizers on the benchmark corpus, single-threaded, split into the same
documents as tokenizer_bench (at blank lines). Prints one JSON object like tokenizer_bench.
With --check IDS (tokenizer_bench's IDS_OUT), also checks that every document got the same ids.
  bench_hf.py TOKENIZER_JSON CORPUS [--passes 3] [--check IDS]
"""
import argparse
import json
import os
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
import tokenizers  # noqa: E402  (after the environment that pins it to one thread)


def split_documents(corpus):
    docs, pos = [], 0
    while pos < len(corpus):
        end = corpus.find("\n\n", pos)
        end = len(corpus) if end < 0 else end + 2
        docs.append(corpus[pos:end])
        pos = end
    return docs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer")
    ap.add_argument("corpus")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--check")
    a = ap.parse_args()
    start = time.perf_counter()
    tok = tokenizers.Tokenizer.from_file(a.tokenizer)
    load_s = time.perf_counter() - start
    with open(a.corpus, "rb") as f:
        raw = f.read()
    docs = split_documents(raw.decode("utf-8"))
    best, n_tokens, encodings = 1e30, 0, None
    for _ in range(a.passes):
        start = time.perf_counter()
        encodings = tok.encode_batch(docs, add_special_tokens=False)
        best = min(best, time.perf_counter() - start)
        n_tokens = sum(len(e.ids) for e in encodings)
    result = {"impl": "hf-tokenizers " + tokenizers.__version__, "tokenizer": a.tokenizer, "load_s": round(load_s, 3),
              "corpus_mb": round(len(raw) / 1e6, 2), "documents": len(docs), "tokens": n_tokens,
              "encode_s": round(best, 3), "mb_per_s": round(len(raw) / 1e6 / best, 2)}
    if a.check:
        with open(a.check) as f:
            ours = [line.rstrip("\n") for line in f]
        theirs = [" ".join(map(str, e.ids)) for e in encodings]
        mismatched = [i for i, (x, y) in enumerate(zip(ours, theirs)) if x != y]
        result["same_ids"] = len(ours) == len(theirs) and not mismatched
        if mismatched:
            result["first_mismatch_document"] = mismatched[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
