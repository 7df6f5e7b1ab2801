#!/usr/bin/env python3
"""Differential check against Hugging Face tokenizers (not part of ctest: it needs
`pip install tokenizers`). Builds variants of the shared tokenizer.json files that exercise the
components the shared vectors do not (added-token lstrip/rstrip/single_word/normalized,
NFKC/NFD/NFKD/Lowercase/Strip/Replace/Prepend normalizers, Metaspace schemes and split, every
Split behavior with and without invert, Digits, Whitespace, WhitespaceSplit, ByteLevel with
add_prefix_space and its regex), encodes random text with `headinfer tokenize --input-jsonl`
and with HF, and reports every difference in ids, ids_with_special and decoded.
  hf_differential.py PATH/TO/headinfer [--seed N] [--cases 400]
Exit status 1 when anything differs.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

from tokenizers import Tokenizer

T = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..', 'shared', 'testdata', 'tokenizers')
def load(name): return json.load(open(f'{T}/{name}/tokenizer.json'))
pieces = ["hello", "Hello", "WORLD", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "'s", "'S", "'ll", "don't", "123", "4567890", "3.14",
          "é", "É", "ﬁ", "Å", "e\u0301", "中文", "日本語", "Ж", "ß", "İ", "ΣΑΣ", "😀", "👍🏽", "\u00a0", "\u3000", "\u2028", ",", ".", "!?", "--", "(x)",
          "<tag>", "<TAG>", "word", "words", "sword", "Ab", "AB", "ab", "<s>", "</s>", "[INST]", "<|eot_id|>", "▁", "▁▁", "x", "_", "٣", "²", "\x0b"]
def rand_text(rng):
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
def added(id_, content, **kw):
    d = {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": False}
    d.update(kw); return d

configs = {}
# A: llama3 + added tokens with flags
d = load('llama3')
d['added_tokens'] += [added(128256, "<tag>", lstrip=True, rstrip=True), added(128257, "word", single_word=True), added(128258, "Ab", normalized=True, special=True)]
configs['llama3_added'] = d
# B: GPT-2 style ByteLevel pre-tokenizer with prefix space and regex
d = load('llama3'); d['pre_tokenizer'] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
d['model']['ignore_merges'] = False; d['post_processor'] = None
configs['gpt2style'] = d
# C: llama2 with heavy normalizers + Metaspace split always
d = load('llama2')
d['normalizer'] = {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}, {"type": "Strip", "strip_left": True, "strip_right": True},
                    {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}]}
d['pre_tokenizer'] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
d['decoder'] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
d['added_tokens'].append(added(32000, "word", normalized=True))
d['added_tokens'].append(added(32001, "<tag>", rstrip=True, lstrip=True, special=True))
configs['llama2_norm_meta'] = d
# D: qwen2 with digits + split behaviors
for beh in ["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"]:
    for inv in [False, True]:
        d = load('qwen2')
        d['pre_tokenizer'] = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": False},
            {"type": "Split", "pattern": {"Regex": "[,.!?]| (?=\\p{Lu})"}, "behavior": beh, "invert": inv},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
        configs[f'qwen2_{beh}_{inv}'] = d
d = load('qwen2'); d['pre_tokenizer'] = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, {"type": "Split", "pattern": {"String": "o"}, "behavior": "MergedWithNext", "invert": False}, {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": False}]}
d['normalizer'] = {"type": "NFD"}
configs['qwen2_digits_nfd'] = d
# E: mistral never + rstrip added
d = load('mistral'); d['pre_tokenizer']['prepend_scheme'] = 'never'; d['decoder']['decoders'][-1] = {"type": "Strip", "content": " ", "start": 2, "stop": 1}
d['added_tokens'][2]['rstrip'] = True; d['added_tokens'][2]['lstrip'] = True
configs['mistral_never'] = d
d = load('mistral'); d['pre_tokenizer'] = {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}]}
configs['mistral_ws_first'] = d
d = load('mistral'); d['pre_tokenizer'] = {"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False}]}
d['normalizer'] = {"type": "Sequence", "normalizers": [{"type": "NFKD"}, {"type": "Prepend", "prepend": "@"}]}
configs['mistral_whitespace_nfkd'] = d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("headinfer")
    ap.add_argument("--seed", type=int, default=random.SystemRandom().randrange(1 << 30))
    ap.add_argument("--cases", type=int, default=400)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    texts = [rand_text(rng) for _ in range(a.cases)]
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        texts_path = os.path.join(tmp, "texts.jsonl")
        with open(texts_path, "w") as f:
            for t in texts:
                f.write(json.dumps({"text": t}) + "\n")
        for name, d in configs.items():
            path = os.path.join(tmp, name + ".json")
            with open(path, "w") as f:
                json.dump(d, f)
            hf = Tokenizer.from_file(path)
            run = subprocess.run([a.headinfer, "tokenize", "--tokenizer", path, "--input-jsonl", texts_path],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                print(name, run.stderr.strip())
                bad += 1
                continue
            lines = run.stdout.split("\n")
            n_bad = 0
            for t, line in zip(texts, lines):
                ours = json.loads(line)
                e, e2 = hf.encode(t, add_special_tokens=False), hf.encode(t)
                try:
                    decoded = hf.decode(e.ids, skip_special_tokens=False)
                except BaseException:  # HF's Strip decoder panics on some empty tokens
                    continue
                expected = {"ids": e.ids, "ids_with_special": e2.ids, "decoded": decoded}
                for key, value in expected.items():
                    if value != ours[key]:
                        n_bad += 1
                        if n_bad <= 3:
                            print(f"{name} {key} {t!r}\n  hf   {value}\n  ours {ours[key]}\n  hf tokens {e.tokens}")
                        break
            print(f"{name}: {n_bad} of {len(texts)} differ")
            bad += n_bad
    print(f"seed {a.seed}: {bad} differences")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
