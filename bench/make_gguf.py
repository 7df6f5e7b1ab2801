#!/usr/bin/env python3
"""Writes an f16 GGUF of a built-in llama shape with random weights, for llama.cpp as a peer.

Uses llama.cpp's own gguf-py (put the carried tree's gguf-py on PYTHONPATH, as
bench/run_gpu.sh does) and the real llama3 vocabulary (tokenizer.json: 128000 BPE tokens, 256
special tokens, the merges), so llama.cpp loads it as it loads a converted Llama 3 and the
output projection has the real vocabulary's size. Weights: normal, std 0.02 (norms 1.0, f32),
sliced out of one pool of random f16 values at a different offset per tensor (the pool is as
large as the largest tensor, so 16 GB are written at disk speed, not at random-number speed);
no tensor is all zeros. llama3's rope scaling goes in as rope_freqs.weight, as llama.cpp's
converter writes it.

usage: make_gguf.py --shape llama3-8b --tokenizer tokenizer.json -o model.gguf [--seed 0]
shapes: llama3-8b, llama3.2-1b (BENCH.md), tiny (2 layers, hidden 64: the smoke test)
"""
import argparse
import json
import math
import sys
import time

# The shapes of bench/peers.py and `headinfer bench --shape` (BENCH.md), in llama.cpp's terms.
SHAPES = {
    "llama3-8b": dict(n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, head_dim=128, n_ff=14336, tied=False,
                      rope_base=500000.0, rope_factor=8.0, rms_eps=1e-5),
    "llama3.2-1b": dict(n_embd=2048, n_layer=16, n_head=32, n_head_kv=8, head_dim=64, n_ff=8192, tied=True,
                        rope_base=500000.0, rope_factor=32.0, rms_eps=1e-5),
    # awkward sizes on purpose: 3 kv heads of 5 query heads each, ffn 88
    "tiny": dict(n_embd=80, n_layer=2, n_head=15, n_head_kv=3, head_dim=16, n_ff=88, tied=False,
                 rope_base=500000.0, rope_factor=8.0, rms_eps=1e-5),
}
N_CTX_TRAIN = 131072
N_VOCAB = 128256  # the llama3 tokenizer's: every shape here has it (bench/report.py reads it for the floors)


def llama3_rope_factors(head_dim, base, factor, low_freq_factor=1.0, high_freq_factor=4.0, old_ctx=8192):
    """Per-frequency divisors of llama3's rope scaling ([head_dim/2] f32), as transformers applies them."""
    import numpy as np
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / base ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high_freq_factor:
            out.append(1.0)
        elif wavelen > old_ctx / low_freq_factor:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def read_vocab(path):
    """tokenizer.json (BPE, byte level) -> (tokens by id, token types, merges as 'a b')."""
    with open(path, encoding="utf-8") as f:
        t = json.load(f)
    model = t.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: not a BPE tokenizer (model.type {model.get('type')!r})")
    vocab = dict(model["vocab"])
    special = set()
    for a in t.get("added_tokens", []):
        vocab[a["content"]] = a["id"]
        if a.get("special"):
            special.add(a["id"])
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [5] * n  # UNUSED where the file has a hole
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = 3 if i in special else 1  # CONTROL, NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, types, merges


def write(shape, tokenizer, path, seed):
    import gguf  # llama.cpp's gguf-py, from PYTHONPATH
    import numpy as np

    s = SHAPES[shape]
    tokens, types, merges = read_vocab(tokenizer)
    if len(tokens) != N_VOCAB:
        raise ValueError(f"{tokenizer}: {len(tokens)} tokens, not the llama3 vocabulary's {N_VOCAB}")
    n_vocab, e, hd = len(tokens), s["n_embd"], s["head_dim"]
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(f"headinfer random {shape}")
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(e)
    w.add_block_count(s["n_layer"])
    w.add_feed_forward_length(s["n_ff"])
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(s["rope_base"])
    w.add_layer_norm_rms_eps(s["rms_eps"])
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(128000 if n_vocab > 128000 else 0)
    w.add_eos_token_id(128009 if n_vocab > 128009 else 0)

    # (name, numpy shape [rows, cols] as gguf-py takes it, f32 value or None for random f16)
    tensors = [("token_embd.weight", (n_vocab, e), None), ("output_norm.weight", (e,), 1.0)]
    if not s["tied"]:
        tensors.append(("output.weight", (n_vocab, e), None))
    tensors.append(("rope_freqs.weight", (hd // 2,), "rope"))
    for i in range(s["n_layer"]):
        b = f"blk.{i}."
        tensors += [(b + "attn_norm.weight", (e,), 1.0),
                    (b + "attn_q.weight", (s["n_head"] * hd, e), None),
                    (b + "attn_k.weight", (s["n_head_kv"] * hd, e), None),
                    (b + "attn_v.weight", (s["n_head_kv"] * hd, e), None),
                    (b + "attn_output.weight", (e, s["n_head"] * hd), None),
                    (b + "ffn_norm.weight", (e,), 1.0),
                    (b + "ffn_gate.weight", (s["n_ff"], e), None),
                    (b + "ffn_up.weight", (s["n_ff"], e), None),
                    (b + "ffn_down.weight", (e, s["n_ff"]), None)]
    for name, shp, val in tensors:
        f32 = val is not None
        w.add_tensor_info(name, shp, np.dtype(np.float32 if f32 else np.float16), math.prod(shp) * (4 if f32 else 2))

    # One pool of random f16 values, a little larger than the largest tensor; each tensor is a
    # contiguous slice at its own offset, so tensors differ without generating 16 GB of randoms.
    largest = max(math.prod(shp) for _, shp, val in tensors if val is None)
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal(largest + 65537, dtype=np.float32) * 0.02).astype(np.float16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for k, (name, shp, val) in enumerate(tensors):
        if val == "rope":
            data = llama3_rope_factors(hd, s["rope_base"], s["rope_factor"])
        elif val is not None:
            data = np.full(shp, val, dtype=np.float32)
        else:
            off = (k * 7919) % (len(pool) - math.prod(shp) + 1)
            data = pool[off:off + math.prod(shp)].reshape(shp)
        w.write_tensor_data(data)
    w.close()
    return sum(math.prod(shp) * (4 if val is not None else 2) for _, shp, val in tensors)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", required=True, choices=sorted(SHAPES))
    p.add_argument("--tokenizer", required=True, help="a BPE tokenizer.json (the llama3 one)")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    t0 = time.perf_counter()
    try:
        nbytes = write(a.shape, a.tokenizer, a.out, a.seed)
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"error: {e}")
    dt = time.perf_counter() - t0
    print(f"wrote {a.out}: {a.shape}, {nbytes / 2**30:.2f} GiB of tensors in {dt:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
