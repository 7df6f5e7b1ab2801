#!/usr/bin/env python3
"""Remakes the committed seed corpus of tests/fuzz/corpus/<target>/ from the shared test data.

Small on purpose (libFuzzer mutates small inputs fastest): safetensors headers of the tiny models
with their data cut to nothing and small valid files with every supported dtype; every shared
config.json; shared tokenizer.json files trimmed to their first few hundred tokens (merges and
added tokens that only name kept tokens); texts from the tokenizer vectors; option strings; KV
snapshots of the tiny sliding-window model, written by the headinfer CLI ($HEADINFER_BIN, default
build/src/cli/headinfer; without it the committed kv_snapshot seeds are kept as they are).
Usage: tests/fuzz/make_corpus.py [TESTDATA]   (default ../shared/testdata beside the checkout)
"""
import glob
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTDATA = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(ROOT), "shared", "testdata")
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")


def put(target, name, data):
    os.makedirs(os.path.join(OUT, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data)


def safetensors_bytes(tensors, metadata=None, pad=True):
    """tensors: [(name, dtype, shape, element size)]; data is a counting byte pattern."""
    header, offset, data = {}, 0, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, elem in tensors:
        n = elem
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        data += bytes((offset + i) % 251 for i in range(n))
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    while pad and (8 + len(text)) % 8:
        text += b" "
    return struct.pack("<Q", len(text)) + text + data


def safetensors_corpus():
    for path in sorted(glob.glob(os.path.join(TESTDATA, "models", "*", "*", "*.safetensors")) +
                       glob.glob(os.path.join(TESTDATA, "models", "stories260k", "*.safetensors"))):
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            head = f.read(n)
        name = os.path.basename(os.path.dirname(path)) + "-" + os.path.basename(path).replace(".safetensors", "")
        put("safetensors", name + "-header-only", struct.pack("<Q", n) + head)
    put("safetensors", "valid-f32-bf16-f16", safetensors_bytes(
        [("a", "F32", [3, 5], 4), ("b.weight", "BF16", [7], 2), ("c", "F16", [2, 1, 3], 2), ("empty", "F32", [0, 4], 4)],
        metadata={"format": "pt"}))
    put("safetensors", "valid-scalar", safetensors_bytes([("s", "F32", [], 4)], pad=False))
    put("safetensors", "valid-empty-header", safetensors_bytes([]))
    # The overflow that ended as "error: internal" (issue 15): a number past double's range.
    text = b'{"a":{"dtype":"F32","shape":[392320E392448],"data_offsets":[0,4]}}'
    put("safetensors", "regression-number-overflow", struct.pack("<Q", len(text)) + text + b"\0" * 4)


def config_corpus():
    for path in sorted(glob.glob(os.path.join(TESTDATA, "configs", "*", "config.json")) +
                       glob.glob(os.path.join(TESTDATA, "models", "*", "*", "config.json")) +
                       glob.glob(os.path.join(TESTDATA, "models", "stories260k", "config.json"))):
        name = os.path.basename(os.path.dirname(path))
        with open(path, "rb") as f:
            put("config", name, f.read())


def trimmed_tokenizer(path, n_keep):
    with open(path, encoding="utf-8") as f:
        t = json.load(f)
    vocab = t["model"]["vocab"]
    kept = {tok: i for tok, i in vocab.items() if i < n_keep}
    t["model"]["vocab"] = kept
    merges = []
    for m in t["model"].get("merges", []):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in kept and b in kept and (a + b) in kept:
            merges.append(m)
    t["model"]["merges"] = merges
    # Added tokens keep their ids (the post-processor names them by id): the first few, and every
    # one the post-processor names.
    pp = json.dumps(t.get("post_processor"))
    t["added_tokens"] = [tok for k, tok in enumerate(t.get("added_tokens", []))
                         if tok["id"] < n_keep or k < 4 or json.dumps(tok["content"]) in pp]
    return json.dumps(t, ensure_ascii=False, separators=(",", ":"))


def tokenizer_corpus():
    sources = {"llama3": "tokenizers/llama3/tokenizer.json", "qwen2": "tokenizers/qwen2/tokenizer.json",
               "llama2": "tokenizers/llama2/tokenizer.json", "mistral": "tokenizers/mistral/tokenizer.json"}
    for name, rel in sources.items():
        put("tokenizer_load", name + "-trimmed", trimmed_tokenizer(os.path.join(TESTDATA, rel), 400))
    shutil.copy(os.path.join(TESTDATA, "models", "stories260k", "tokenizer.json"),
                os.path.join(OUT, "tokenizer_load", "stories260k"))


def codec_corpus():
    # Byte 0: tokenizer index (0 llama3, 1 qwen2, 2 llama2, 3 mistral, 4 stories260k) + 5 * id mode
    # + 10 * add_special (fuzz_tokenizer_codec.cpp).
    texts = set()
    for name in ("llama3", "qwen2", "llama2", "mistral"):
        with open(os.path.join(TESTDATA, "vectors", "hf", name + ".jsonl"), encoding="utf-8") as f:
            for line in f:
                texts.add(json.loads(line)["text"])
    texts = sorted(texts, key=lambda s: (len(s), s))[:40]
    for i, text in enumerate(texts):
        sel = i % 5 + 10 * (i % 2)
        put("tokenizer_codec", "text-%02d" % i, bytes([sel]) + text.encode("utf-8"))
    put("tokenizer_codec", "invalid-utf8", bytes([0]) + b"ab\xff\xc3(")
    for k in range(5):
        ids = [1, 2, 300, 13, 29871 % 256, 0, 7][: 3 + k]
        put("tokenizer_codec", "ids-%d" % k, bytes([k + 5]) + b"".join(struct.pack("<i", i) for i in ids))


def options_corpus():
    # Byte 0: 0 byte size, 1 count, 2 id list (fuzz_options.cpp).
    for i, s in enumerate(["24GiB", "1.5GiB", "512MiB", "24GB", "24G", "1TiB", "4096", "0", "1e3GiB"]):
        put("options", "size-%d" % i, b"\0" + s.encode())
    for i, s in enumerate(["4096", "128K", "1M", "4G", "999999999999G"]):
        put("options", "count-%d" % i, b"\1" + s.encode())
    for i, s in enumerate(["1,2,3", " 4, 5 ,6", "123456789", "1,,2"]):
        put("options", "ids-%d" % i, b"\2" + s.encode())


def kv_snapshot_corpus():
    # Byte 0: odd = repair the checksums first, even = the file as it is (fuzz_kv_snapshot.cpp).
    # 59 positions (past the window of 48: each layer keeps its last 47 rows) and 19 (all rows).
    cli = os.environ.get("HEADINFER_BIN", os.path.join(ROOT, "build", "src", "cli", "headinfer"))
    if not os.access(cli, os.X_OK):
        print("make_corpus.py: no headinfer CLI at %s; kv_snapshot seeds kept" % cli)
        return
    model = os.path.join(TESTDATA, "models", "tiny", "mistral_swa-f32")
    shutil.rmtree(os.path.join(OUT, "kv_snapshot"), ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, n, step, modes in [("window59", 59, 7, (1, 0)), ("short19", 19, 11, (1,))]:
            ids = ",".join(str(3 + i * step % 300) for i in range(n))
            path = os.path.join(tmp, name + ".snap")
            subprocess.run([cli, "generate", "-m", model, "--prompt-ids", ids, "-n", "1", "--device", "cpu",
                            "--ctx", "96", "--kv-save", path, "--json"], check=True, stdout=subprocess.DEVNULL)
            data = open(path, "rb").read()
            for mode in modes:
                put("kv_snapshot", "%s_%s" % (name, "repair" if mode else "raw"), bytes([mode]) + data)


if __name__ == "__main__":
    # Every seed is remade but the regression inputs added by hand (regression-*).
    for path in glob.glob(os.path.join(OUT, "*", "*")):
        if not os.path.basename(path).startswith("regression-") and "kv_snapshot" not in path:
            os.remove(path)
    safetensors_corpus()
    config_corpus()
    tokenizer_corpus()
    codec_corpus()
    options_corpus()
    kv_snapshot_corpus()
    total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(OUT, "*", "*")))
    print("corpus: %d files, %d bytes" % (len(glob.glob(os.path.join(OUT, "*", "*"))), total))
