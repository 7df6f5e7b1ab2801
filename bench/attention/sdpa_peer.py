"""PyTorch's causal SDPA at llama3-8b's head shape, the peer for tests/cuda/attention_bench_test.cpp.

Same card, same run (scripts/gpu_check.sh calls both). q [1, 32, T, 128], k and v [1, 8, T, 128]
expanded to 32 heads before timing (not every backend takes GQA), bf16, is_causal=True; one line
per backend (cuDNN, flash) and length, TFLOP/s counted as 4 h d T^2 / 2 like the C++ side.
Median of CUDA-event timings after warm-up.
"""
import os
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F

H, HKV, D = 32, 8, 128


def time_ms(fn, iters):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    lengths = [4096, 16384, 32768] + ([131072] if os.environ.get("HEADINFER_BENCH_LONG") else [])
    print(f"[peer] {torch.cuda.get_device_name()} torch {torch.__version__} cudnn {torch.backends.cudnn.version()}")
    for T in lengths:
        q = torch.randn(1, H, T, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, HKV, T, D, device="cuda", dtype=torch.bfloat16).repeat_interleave(H // HKV, dim=1)
        v = torch.randn(1, HKV, T, D, device="cuda", dtype=torch.bfloat16).repeat_interleave(H // HKV, dim=1)
        flops = 4.0 * H * D * 0.5 * T * T
        iters = 20 if T <= 4096 else 5 if T <= 32768 else 3
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel([backend]):
                    ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), iters)
                print(f"[peer] sdpa {name} T={T}: {ms:.3f} ms, {flops / ms / 1e9:.1f} TFLOP/s")
            except RuntimeError as e:  # a backend that does not take this shape
                print(f"[peer] sdpa {name} T={T}: unavailable ({str(e).splitlines()[0][:120]})")
        del q, k, v
        torch.cuda.empty_cache()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
