#!/usr/bin/env python3
"""Floors of the machine and the transformers peers, per ../shared/BENCH.md, as one JSON object.

Floors: pinned host->device copy GB/s, device copy GB/s, a large bf16 GEMM TFLOP/s, and PyTorch's
fastest causal SDPA TFLOP/s at each context. Peers: transformers generate() on the same shape
with random weights (seeded), default cache and offloaded cache, optionally under a GPU memory cap
(torch.cuda.set_per_process_memory_fraction). Prefill seconds = time of generate(max_new_tokens=1);
decode seconds per token = (time of generate(max_new_tokens=1+n) - prefill) / n.

usage: peers.py --shape llama3-8b --ctx 8192,131072 [--gpu-mem-gib 24] [--n-decode 8]
                [--offloaded-n-decode 2] [--skip-peers] > peers.json
"""
import argparse
import json
import sys
import time

import torch

SHAPES = {
    "llama3-8b": dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, intermediate_size=14336, vocab_size=128256, rope_theta=500000.0,
                      rms_norm_eps=1e-5, max_position_embeddings=131072,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "llama3.2-1b": dict(model_type="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=8, intermediate_size=8192, vocab_size=128256, head_dim=64,
                        rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
                        tie_word_embeddings=True,
                        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}


def timed(fn, repeat=5):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def floors(contexts):
    out = {}
    n = 1 << 30
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    dev2 = torch.empty(n, dtype=torch.uint8, device="cuda")
    out["pinned_h2d_gbps"] = n / timed(lambda: dev.copy_(host, non_blocking=True)) / 1e9
    out["device_copy_gbps"] = 2 * n / timed(lambda: dev2.copy_(dev)) / 1e9  # read + write
    del host, dev, dev2
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    out["bf16_gemm_tflops"] = 2 * 8192**3 / timed(lambda: a @ b, 20) / 1e12
    del a, b
    from torch.nn.attention import SDPBackend, sdpa_kernel
    sdpa = {}
    for ctx in contexts:
        q = torch.randn(1, 32, ctx, 128, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(1, 32, ctx, 128, dtype=torch.bfloat16, device="cuda")
        v = torch.randn_like(k)
        flops = 4 * ctx * ctx * 128 * 32 / 2  # causal: half of QK^T and PV
        best = {}
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    t = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), 3)
                best[name] = flops / t / 1e12
            except RuntimeError as e:
                best[name] = None
        sdpa[str(ctx)] = best
        del q, k, v
    out["causal_sdpa_tflops"] = sdpa
    torch.cuda.empty_cache()
    return out


def transformers_peer(shape, ctx, cache, n_decode, cap_gib):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 2**30 / total) if cap_gib else 1.0)
    cfg = LlamaConfig(**{k: v for k, v in SHAPES[shape].items() if k != "model_type"})
    cfg._attn_implementation = "sdpa"  # what from_pretrained picks; a bare config would fall back to eager
    result = {"system": f"transformers ({cache} cache)", "context": ctx, "gpu_cap_gib": cap_gib}
    # Built directly in bf16 on the GPU: an fp32 build would not fit the cap before the cast.
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg).eval()
    except torch.OutOfMemoryError:
        torch.set_default_dtype(torch.float32)
        torch.cuda.set_per_process_memory_fraction(1.0)
        return dict(result, error="out of memory loading the weights")
    torch.set_default_dtype(torch.float32)
    ids = torch.randint(0, cfg.vocab_size, (1, ctx), device="cuda")
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    if cache != "default":
        kw["cache_implementation"] = cache
    try:
        with torch.no_grad():
            # Warm-up on a short prompt: the first generate() of a process loads kernels lazily,
            # which would land in the timed decode of whichever configuration runs first.
            model.generate(ids[:, :16], max_new_tokens=3, min_new_tokens=3, **kw)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
            torch.cuda.synchronize()
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1 + n_decode, min_new_tokens=1 + n_decode, **kw)
            torch.cuda.synchronize()
            total_t = time.perf_counter() - t0
        result.update(prefill_seconds=prefill, decode_seconds_per_token=max(total_t - prefill, 0) / n_decode,
                      n_decode=n_decode, gpu_peak_bytes=torch.cuda.max_memory_allocated())
    except torch.OutOfMemoryError:
        result.update(error="out of memory", gpu_peak_bytes=torch.cuda.max_memory_allocated())
    del model
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.0)
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama3-8b")
    p.add_argument("--ctx", default="8192")
    p.add_argument("--gpu-mem-gib", type=float, default=24.0)
    p.add_argument("--n-decode", type=int, default=8)
    p.add_argument("--offloaded-n-decode", type=int, default=2)
    p.add_argument("--skip-peers", action="store_true")
    a = p.parse_args()
    contexts = [int(c) for c in a.ctx.split(",")]
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "floors": floors(contexts), "peers": []}
    print(json.dumps(out["floors"]), file=sys.stderr, flush=True)
    if not a.skip_peers:
        import transformers
        out["transformers"] = transformers.__version__
        for ctx in contexts:
            for cache, cap, n in (("default", None, a.n_decode), ("default", a.gpu_mem_gib, a.n_decode),
                                  ("offloaded", a.gpu_mem_gib, a.offloaded_n_decode),
                                  ("offloaded", None, a.offloaded_n_decode)):
                r = transformers_peer(a.shape, ctx, cache, n, cap)
                print(json.dumps(r), file=sys.stderr, flush=True)
                out["peers"].append(r)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
