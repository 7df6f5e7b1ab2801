#!/usr/bin/env python3
"""Floors of the machine and the transformers peers, per ../shared/BENCH.md, as one JSON object.

Floors (--floors): pinned host->device copy GB/s, device copy GB/s, a large bf16 GEMM TFLOP/s,
and PyTorch's fastest causal SDPA TFLOP/s at each context.

Peers (--configs): transformers generate() on the same shape with random weights (seeded), in
its best honest configuration: SDPA, bf16, `attention_mask=torch.ones_like(ids)` and no
`pad_token_id` (with pad_token_id and no mask, generate() builds a padding mask from the ids and
SDPA leaves its causal fast path), greedy. One model per process, reused by every configuration:
  default          the default (dynamic) cache
  offloaded        cache_implementation="offloaded"
  static-compile   cache_implementation="static", which generate() compiles with torch.compile
                   (its default CompileConfig, mode reduce-overhead) for the decode steps: the recipe
                   transformers' docs give for fast decode. A failure to compile is recorded in the
                   result's "error", not raised.
  NAME@24          the same under a 24 GiB cap (torch.cuda.set_per_process_memory_fraction; the
                   weights count towards it, as every byte headinfer allocates counts towards
                   --gpu-mem)
Each configuration runs generate(max_new_tokens=1+n_decode) `1 + runs` times: the first call
(kernel loading, cuBLAS heuristics, compilation; for the process's first configuration also CUDA
context set-up) is reported apart as first_call_*; the prefill and decode figures are the medians
of the `runs` timed calls that follow. A logits processor synchronises and stamps the time at each
step, so prefill seconds = start of generate() to the first token's logits, decode seconds per
token = median of the step-to-step times (what `headinfer bench` reports: median of the steps).

usage: peers.py --shape llama3-8b --ctx 8192 [--floors] [--configs default,offloaded,static-compile,default@24]
                [--runs 3] [--n-decode 32] [--device cuda|cpu] > peers.json
       peers.py --shape tiny --device cpu --ctx 64 --configs default,offloaded,static-compile --n-decode 4
                (the smoke test: runs on a CPU in seconds)
"""
import argparse
import json
import statistics
import sys
import time

import torch

SHAPES = {
    "llama3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, intermediate_size=14336, vocab_size=128256, rope_theta=500000.0,
                      rms_norm_eps=1e-5, max_position_embeddings=131072,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "llama3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=8, intermediate_size=8192, vocab_size=128256, head_dim=64,
                        rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
                        tie_word_embeddings=True,
                        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    # The smoke-test shape: awkward sizes (3 kv heads of 5 query heads each, ffn 88), seconds on a CPU.
    "tiny": dict(hidden_size=120, num_hidden_layers=2, num_attention_heads=15, num_key_value_heads=3,
                 head_dim=8, intermediate_size=88, vocab_size=509, rope_theta=10000.0, rms_norm_eps=1e-5,
                 max_position_embeddings=4096),
}

CACHES = ("default", "offloaded", "static-compile")


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


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
                    t = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
                              3 if ctx <= 32768 else 1)
                best[name] = flops / t / 1e12
            except RuntimeError:
                best[name] = None
        sdpa[str(ctx)] = best
        del q, k, v
    out["causal_sdpa_tflops"] = sdpa
    torch.cuda.empty_cache()
    return out


def build_model(shape, device, seed=0):
    """The shape with random weights, built directly in bf16 on the device (an fp32 build of 8B
    would not fit a 24 GiB cap before the cast), SDPA attention as from_pretrained picks it."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(**SHAPES[shape])
    cfg._attn_implementation = "sdpa"  # a bare config would fall back to eager
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(torch.float32)


def parse_config(text):
    """'default', 'offloaded@24', ... -> (cache, cap GiB or None); bad names fail before any work."""
    cache, _, cap = text.partition("@")
    if cache not in CACHES:
        raise ValueError(f"--configs: unknown cache '{cache}' (give {', '.join(CACHES)}, optionally @GiB)")
    try:
        cap_gib = float(cap) if cap else None
    except ValueError:
        raise ValueError(f"--configs: '{text}': the cap after @ must be a number of GiB") from None
    if cap_gib is not None and cap_gib <= 0:
        raise ValueError(f"--configs: '{text}': the cap must be positive")
    return cache, cap_gib


def set_cap(device, cap_gib):
    if device != "cuda":
        return
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 2**30 / total) if cap_gib else 1.0)


def generate_once(model, ids, cache, n_decode, device):
    """One generate() of 1 + n_decode tokens -> (prefill s, [decode step s], total s)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class StepClock(LogitsProcessor):  # called once per generated token, after its forward
        def __init__(self):
            self.stamps = []

        def __call__(self, input_ids, scores):
            sync(device)
            self.stamps.append(time.perf_counter())
            return scores

    clock = StepClock()
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=1 + n_decode,
              min_new_tokens=1 + n_decode, logits_processor=LogitsProcessorList([clock]))
    if cache == "offloaded":
        kw["cache_implementation"] = "offloaded"
    elif cache == "static-compile":
        kw["cache_implementation"] = "static"  # generate() compiles the decode forward for a static cache
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, **kw)
    sync(device)
    total = time.perf_counter() - t0
    s = clock.stamps
    return s[0] - t0, [b - a for a, b in zip(s, s[1:])], total


def measure(model, shape, ctx, cache, cap_gib, n_decode, runs, device, first_in_process):
    """One configuration: a first call, then `runs` timed calls; out of memory and compile
    failures are results."""
    result = {"system": f"transformers ({cache} cache)" if cache != "static-compile"
              else "transformers (static cache + torch.compile)",
              "cache": cache, "shape": shape, "context": ctx, "gpu_cap_gib": cap_gib, "n_decode": n_decode,
              "runs": runs, "first_in_process": first_in_process}
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if cache == "offloaded" and device != "cuda":
        return dict(result, error="the offloaded cache needs a CUDA device")
    set_cap(device, cap_gib)
    gen = torch.Generator().manual_seed(ctx)
    ids = torch.randint(0, model.config.vocab_size, (1, ctx), generator=gen).to(device)
    try:
        prefill, steps, total = generate_once(model, ids, cache, n_decode, device)
        result.update(first_call_prefill_seconds=prefill, first_call_seconds=total,
                      first_call_decode_seconds_per_token=statistics.median(steps))
        prefills, all_steps = [], []
        for _ in range(runs):
            prefill, steps, _ = generate_once(model, ids, cache, n_decode, device)
            prefills.append(prefill)
            all_steps += steps
        result.update(prefill_seconds=statistics.median(prefills), prefill_seconds_all=prefills,
                      decode_seconds_per_token=statistics.median(all_steps))
        if cache == "static-compile":
            result["compiled"] = hasattr(model, "_compiled_call")
            if not result["compiled"]:
                result["note"] = "generate() did not compile (not a CUDA device)"
    except torch.OutOfMemoryError:
        result["error"] = "out of memory"
    except Exception as e:  # a compile failure is a result: the peer as its users would meet it
        result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    if device == "cuda":
        result["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
        torch.cuda.empty_cache()
    set_cap(device, None)
    if hasattr(model, "_compiled_call"):  # a compiled call holds its static cache's graphs: drop them
        del model._compiled_call
        torch._dynamo.reset()
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    p.add_argument("--ctx", default="8192", help="contexts, comma-separated")
    p.add_argument("--configs", default="", help="e.g. default,offloaded,static-compile,default@24 (empty: none)")
    p.add_argument("--runs", type=int, default=3, help="timed generate() calls after the first, per configuration")
    p.add_argument("--n-decode", type=int, default=32)
    p.add_argument("--floors", action="store_true", help="measure the floors (CUDA only)")
    p.add_argument("--floor-ctx", default="", help="contexts of the SDPA floor (default: --ctx)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    a = p.parse_args()
    try:
        contexts = [int(c) for c in a.ctx.split(",") if c]
    except ValueError:
        p.error(f"--ctx: '{a.ctx}' is not a comma-separated list of token counts")
    if not contexts or min(contexts) < 1:
        p.error("--ctx: give one or more positive token counts")
    if a.runs < 1 or a.n_decode < 1:
        p.error("--runs and --n-decode must be at least 1")
    try:
        configs = [parse_config(c) for c in a.configs.split(",") if c]
    except ValueError as e:
        p.error(str(e))
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device (give --device cpu for the smoke test)")
    try:
        floor_contexts = [int(c) for c in a.floor_ctx.split(",") if c] or contexts
    except ValueError:
        p.error(f"--floor-ctx: '{a.floor_ctx}' is not a comma-separated list of token counts")
    if a.floors and a.device != "cuda":
        p.error("--floors needs --device cuda")
    out = {"gpu": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu", "torch": torch.__version__,
           "shape": a.shape, "peers": []}
    if configs:
        import transformers
        out["transformers"] = transformers.__version__
        t0 = time.perf_counter()
        model = build_model(a.shape, a.device)
        sync(a.device)
        out["model_build_seconds"] = time.perf_counter() - t0
        for ctx in contexts:
            for cache, cap in configs:
                r = measure(model, a.shape, ctx, cache, cap, a.n_decode, a.runs, a.device,
                            first_in_process=not out["peers"])
                print(json.dumps(r), file=sys.stderr, flush=True)
                out["peers"].append(r)
        del model
    if a.floors:  # after the peers, so that the first configuration's first call is the process's first
        out["floors"] = floors(floor_contexts)
        print(json.dumps(out["floors"]), file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
