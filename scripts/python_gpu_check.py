#!/usr/bin/env python3
"""The Python face on the GPU machine (issue 12's GPU checks); run by scripts/gpu_check.sh with
HEADINFER_PYTHON_CHECK=1, which builds headinfer._core with CUDA and puts it on PYTHONPATH.

bf16  Every tiny bf16 checkpoint through HeadInferModel(transformers model in bf16 on the GPU,
      device="cuda") against transformers' own greedy loop on the same card and the same weights,
      with scripts/bf16_check.py's tolerance and comparison (logits max_rel <= u sqrt(3K); ids
      identical except at near ties within it). The engine must read the model's GPU tensors in
      place: weights_in_place_bytes == weight_bytes.
8b    llama3-8b-shape random bf16 weights written once as safetensors (headinfer make-model) and
      loaded by both sides: the CLI (`headinfer generate --gpu-mem 24GiB --ctx N`) and, in this
      process, transformers' model on the GPU through HeadInferModel(model, gpu_mem="24GiB").
      Same prompt (CTX - NEW random ids), greedy, eos ignored. Checks: identical tokens; prefill
      and decode time within 3%; GPU memory: the engine's own peak excludes the weights (they are
      the model's tensors, used in place), and the card's peak use (sampled with cudaMemGetInfo)
      stays within the weights plus the engine's plan plus the CUDA/cuBLAS contexts.

usage: python_gpu_check.py --bin build-gpu-py/src/cli/headinfer --testdata DIR --out DIR
                           [--parts bf16,8b] [--ctx 128K] [--new 32] [--model-dir /tmp/llama3-8b-random]
Prints `[py-gpu]` lines, writes OUT/python_gpu_check.json, exits 1 on any failure.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bf16_check  # noqa: E402  (the tolerance, transformers' greedy loop, the comparison)

PREFIX = "[py-gpu]"


def check_bf16(args, report):
    import torch
    from transformers import AutoModelForCausalLM

    from headinfer import HeadInferModel

    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    tiny = Path(args.testdata) / "models" / "tiny"
    ok = True
    for model_dir in sorted(d for d in tiny.glob("*-bf16") if d.is_dir()):
        config = json.loads((model_dir / "config.json").read_text())
        tol, k = bf16_check.tolerance(config)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa")
        model.to("cuda").eval()
        hm = HeadInferModel(model, device="cuda")
        cases = json.loads((tiny / (model_dir.name[:-5] + "-f32") / "ref.json").read_text())["cases"]
        for case in cases:
            prompt = [int(i) for i in case["prompt_ids"]]
            name = f"{model_dir.name}/{len(prompt)}"
            theirs_ids, theirs_logits = bf16_check.run_transformers(model, prompt, args.n, "cuda")
            out = hm.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=args.n, do_sample=False,
                              eos_token_id=[], output_logits=True, return_dict_in_generate=True)
            ours_ids = out.sequences[0, len(prompt):].tolist()
            ours_logits = torch.cat(out.logits).cpu().numpy()
            forced = None
            if ours_ids != theirs_ids and len(ours_ids) == args.n:
                forced = bf16_check.run_transformers(model, prompt, args.n, "cuda", forced_ids=ours_ids)[1]
            r = bf16_check.compare(ours_ids, ours_logits, theirs_ids, theirs_logits, tol, forced)
            in_place = hm.stats["weights_in_place_bytes"] == hm.stats["weight_bytes"] > 0
            if not in_place:
                r["failures"].append(f"weights copied: {hm.stats['weights_in_place_bytes']} of "
                                     f"{hm.stats['weight_bytes']} bytes used in place")
            ok = ok and not r["failures"]
            report["bf16"].append({"model": model_dir.name, "prompt_tokens": len(prompt), "rounding_count": k,
                                   "weights_in_place": in_place, "device": hm.device, **r})
            print(bf16_check.summary_line(name, r).replace(bf16_check.RESULT_PREFIX, PREFIX), flush=True)
        del hm, model
        torch.cuda.empty_cache()
    return ok


class GpuMemorySampler:
    """The card's used memory (cudaMemGetInfo: every process and context), sampled every 20 ms."""

    def __init__(self):
        import torch
        self.torch = torch
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def used(self):
        free, total = self.torch.cuda.mem_get_info()
        return total - free

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.used())
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.used())


def check_8b(args, report):
    import torch
    from transformers import AutoModelForCausalLM

    from headinfer import HeadInferModel, _core

    gib = 1 << 30
    ctx = _core.parse_count(args.ctx, "ctx")
    n_prompt = ctx - args.new
    model_dir = Path(args.model_dir)
    if not (model_dir / "model.safetensors").exists():
        t0 = time.time()
        subprocess.run([args.bin, "make-model", "--shape", "llama3-8b", "--dtype", "bf16", "-o", str(model_dir)],
                       check=True)
        print(f"{PREFIX} wrote {model_dir} in {time.time() - t0:.0f} s", flush=True)
    prompt = np.random.default_rng(12).integers(0, 128000, n_prompt).tolist()
    ids_file = Path(args.out) / "prompt_ids.txt"
    ids_file.write_text(",".join(map(str, prompt)))

    # 1. The CLI, alone on the card.
    cmd = [args.bin, "generate", "-m", str(model_dir), "--prompt-ids", f"@{ids_file}", "-n", str(args.new),
           "--ctx", str(ctx), "--gpu-mem", "24GiB", "--device", "cuda", "--ignore-eos", "--json"]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"headinfer generate exited {p.returncode}: {p.stderr.strip()[-400:]}")
    cli = json.loads(p.stdout.strip().splitlines()[-1])
    cli["wall_seconds"] = time.time() - t0

    # 2. transformers' model on the GPU, then HeadInferModel over it in this process.
    baseline = torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="cuda").eval()
    load_seconds = time.time() - t0
    torch_weights = torch.cuda.memory_allocated()
    with GpuMemorySampler() as mem:
        hm = HeadInferModel(model, gpu_mem="24GiB", device="cuda")
        plan = hm.plan(ctx)
        x = torch.tensor([prompt], device="cuda")
        out = hm.generate(x, max_new_tokens=args.new, do_sample=False, eos_token_id=[])
    py = dict(hm.stats)
    py_tokens = out[0, n_prompt:].tolist()

    same = py_tokens == cli["tokens"]
    prefill_ratio = py["prefill_seconds"] / cli["prefill_seconds"]
    decode_ratio = cli["decode_tokens_per_second"] / py["decode_tokens_per_second"]
    # The engine's own allocations: the plan without the weights (used in place, not copied).
    engine_peak = py["device_peak_bytes"]
    in_place = py["weights_in_place_bytes"] == py["weight_bytes"] > 0
    not_copied = in_place and engine_peak + torch_weights <= plan["gpu_bytes_total"] + 64 * (1 << 20)
    card_peak = mem.peak - baseline
    r = {"context": ctx, "prompt_tokens": n_prompt, "new_tokens": args.new, "same_tokens": same,
         "first_diff": next((i for i, (a, b) in enumerate(zip(py_tokens, cli["tokens"])) if a != b), None),
         "cli": cli, "python": py, "plan": {k: plan[k] for k in ("gpu_bytes_total", "weight_bytes", "kv_bytes_gpu",
                                                                 "n_resident_groups", "n_streamed_groups", "gpu_mem")},
         "prefill_time_ratio_py_over_cli": prefill_ratio, "decode_time_ratio_py_over_cli": decode_ratio,
         "torch_weights_bytes": torch_weights, "engine_peak_bytes": engine_peak,
         "cli_device_peak_bytes": cli["device_peak_bytes"], "card_peak_used_bytes_over_baseline": card_peak,
         "hf_load_seconds": load_seconds, "weights_in_place": in_place, "weights_not_copied": not_copied}
    report["8b"] = r
    print(f"{PREFIX} 8b ctx {ctx}: tokens {'identical' if same else 'DIFFER at ' + str(r['first_diff'])}; "
          f"prefill {py['prefill_seconds']:.3f} s vs CLI {cli['prefill_seconds']:.3f} s ({prefill_ratio:.3f}x); "
          f"decode {py['decode_tokens_per_second']:.2f} vs CLI {cli['decode_tokens_per_second']:.2f} tok/s "
          f"(time {decode_ratio:.3f}x)", flush=True)
    print(f"{PREFIX} 8b GPU: torch weights {torch_weights / gib:.2f} GiB, engine peak {engine_peak / gib:.2f} GiB "
          f"(CLI peak incl. weights {cli['device_peak_bytes'] / gib:.2f} GiB), plan total "
          f"{plan['gpu_bytes_total'] / gib:.2f} GiB, card peak over baseline {card_peak / gib:.2f} GiB; "
          f"weights in place: {in_place}", flush=True)
    return same and abs(prefill_ratio - 1) <= 0.03 and abs(decode_ratio - 1) <= 0.03 and not_copied


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--testdata", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", default="bf16,8b")
    ap.add_argument("-n", type=int, default=16, help="greedy tokens per bf16 case")
    ap.add_argument("--ctx", default="128K")
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--model-dir", default="/tmp/headinfer-llama3-8b-random")
    args = ap.parse_args()
    import torch
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "bf16": [], "8b": None}
    ok = True
    parts = args.parts.split(",")
    try:
        if "bf16" in parts:
            ok = check_bf16(args, report) and ok
        if "8b" in parts:
            ok = check_8b(args, report) and ok
    finally:
        Path(args.out, "python_gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"{PREFIX} summary: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
