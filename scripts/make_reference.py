#!/usr/bin/env python3
"""Recompute transformers' greedy continuations and per-step logits for the shared tiny models.

Needs torch + transformers, no GPU. For each model folder and each prompt of its ref.json it
records, in fp32 on the CPU with TF32 off and no attention-mask inference (every prompt token is
attended, positions 0..n-1): the greedy ids, the logits of each step and the top-1/top-2 margin,
and reports how far they are from the shared ref_logits. This settled where the first shared
references came from (generate() with pad_token_id=0, one of the variants it reproduces); the
shared files were since recomputed as the plain run and agree with it (greedy ids identical,
logits within 1.6e-6 of max|logit|), so the tests read them directly.

usage: make_reference.py TINY_DIR OUT_DIR
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def greedy(model, prompt, n_new, device):
    ids = torch.tensor([prompt], device=device)
    out = model(input_ids=ids, use_cache=True)
    past = out.past_key_values
    logits = [out.logits[0, -1].float().cpu()]
    tokens = []
    for _ in range(n_new):
        nxt = int(torch.argmax(logits[-1]))
        tokens.append(nxt)
        if len(tokens) == n_new:
            break
        out = model(input_ids=torch.tensor([[nxt]], device=device), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits.append(out.logits[0, -1].float().cpu())
    return tokens, torch.stack(logits).numpy()


def generate_pad0(model, prompt, n_new, device):
    ids = torch.tensor([prompt], device=device)
    g = model.generate(ids, max_new_tokens=n_new, do_sample=False, output_logits=True, return_dict_in_generate=True,
                       pad_token_id=0, eos_token_id=None)
    return torch.stack([l[0].float().cpu() for l in g.logits]).numpy()


def margin(logits):
    top2 = np.sort(logits, axis=-1)[:, -2:]
    return float((top2[:, 1] - top2[:, 0]).min())


def main():
    tiny, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {}
    refs = {}
    for f32_dir in sorted(tiny.glob("*-f32")):
        arch = f32_dir.name[:-4]
        shared = json.load(open(f32_dir / "ref.json"))
        refs[arch] = {"cases": []}
        for dtype_name in ("f32", "bf16"):
            model = AutoModelForCausalLM.from_pretrained(tiny / f"{arch}-{dtype_name}", dtype=torch.float32)
            model.eval()
            for case in shared["cases"]:
                prompt = case["prompt_ids"]
                n_new = len(case["greedy_f32"])
                key = f"{arch}-{dtype_name}/{len(prompt)}"
                with torch.no_grad():
                    tokens, logits = greedy(model, prompt, n_new, "cpu")
                entry = {"greedy": tokens, "margin": margin(logits),
                         "equal_shared_greedy": tokens == case[f"greedy_{dtype_name}"]}
                if dtype_name == "f32":
                    np.save(out_dir / f"{arch}_logits_{len(prompt)}.npy", logits.astype(np.float32))
                    shared_logits = np.load(f32_dir / f"ref_logits_{len(prompt)}.npy")
                    entry["cpu_vs_shared_max_abs"] = float(np.abs(logits - shared_logits).max())
                    with torch.no_grad():
                        entry["pad0_vs_shared_max_abs"] = float(
                            np.abs(generate_pad0(model, prompt, n_new, "cpu") - shared_logits).max())
                        if torch.cuda.is_available():
                            model.to("cuda")
                            _, gl = greedy(model, prompt, n_new, "cuda")
                            entry["gpu_vs_shared_max_abs"] = float(np.abs(gl - shared_logits).max())
                            model.to("cpu")
                    refs[arch]["cases"].append({"prompt_ids": prompt, "greedy_f32": tokens,
                                                "min_margin_f32": entry["margin"]})
                else:
                    refs[arch]["cases"][[len(c["prompt_ids"]) for c in refs[arch]["cases"]].index(len(prompt))][
                        "greedy_bf16"] = tokens
                report[key] = entry
                print(key, json.dumps(entry), flush=True)
    json.dump(refs, open(out_dir / "reference.json", "w"), indent=1)
    json.dump(report, open(out_dir / "report.json", "w"), indent=1)


if __name__ == "__main__":
    main()
