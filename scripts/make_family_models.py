#!/usr/bin/env python3
"""Tiny random checkpoints of the families beyond llama/mistral/qwen, and transformers' references.

Writes tests/data/families/<arch>-{f32,bf16}/ (config.json, model.safetensors) for
  gemma2  (softcaps, query_pre_attn_scalar, alternating sliding/global layers, head_dim 32)
  gemma3  (gemma3_text: q/k norms, local/global rope bases, linear scaling on global, 5:1 pattern)
  phi3    (fused qkv/gate_up, longrope short/long factors, partial rotary 0.5)
  nemo    (mistral with an explicit head_dim 32 != hidden/heads, as Mistral-Nemo)
and, in the f32 folder, ref.json (the three prompts of the shared tiny models' ref.json: 7, 61 and
1500 ids, with greedy_f32 and greedy_bf16) and ref_logits_<len>.npy (f32 [steps, vocab]).

The reference is a plain transformers run: CPU, fp32 (the bf16 file is loaded as fp32), eager
attention, every prompt token attended (no attention mask), positions 0..n-1, argmax at each step
with the model's own cache (so phi3's longrope picks short or long factors per forward call from
that call's last position, as transformers does).

usage: /work/venv-hf/bin/python scripts/make_family_models.py [OUT_DIR] [SHARED_TINY_REF]
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, MistralConfig, Phi3Config

from make_reference import greedy, margin  # the shared tiny models' reference loop (scripts/)

torch.backends.cuda.matmul.allow_tf32 = False
torch.set_num_threads(2)

COMMON = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, vocab_size=320,
              rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=4096)


def configs():
    gemma2 = Gemma2Config(**COMMON, num_hidden_layers=3, head_dim=32, query_pre_attn_scalar=24,
                          sliding_window=48, attn_logit_softcapping=4.0, final_logit_softcapping=6.0,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                          hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True)
    gemma3 = Gemma3TextConfig(**COMMON, num_hidden_layers=7, head_dim=16, query_pre_attn_scalar=16,
                              sliding_window=48, final_logit_softcapping=None, attn_logit_softcapping=None,
                              rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                               "full_attention": {"rope_type": "linear", "factor": 8.0,
                                                                  "rope_theta": 1000000.0}},
                              hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True)
    rng = np.random.default_rng(5)
    rot_half = 16 // 2 // 2  # head_dim 16, partial_rotary_factor 0.5: 4 inverse frequencies
    phi3 = Phi3Config(**{**COMMON, "rms_norm_eps": 1e-5}, num_hidden_layers=3, original_max_position_embeddings=64,
                      rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                       "short_factor": [float(x) for x in rng.uniform(1.0, 1.5, rot_half)],
                                       "long_factor": [float(x) for x in rng.uniform(2.0, 8.0, rot_half)]},
                      tie_word_embeddings=False)
    nemo = MistralConfig(**COMMON, num_hidden_layers=3, head_dim=32, sliding_window=None,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False)
    return {"gemma2": gemma2, "gemma3": gemma3, "phi3": phi3, "nemo": nemo}


def randomize(model, seed):
    """Weights large enough that every layer matters (transformers' init std 0.02 leaves the logits
    nearly flat): linears uniform +-1/sqrt(in), embeddings +-1 (gemma: scaled by sqrt(hidden) on use,
    so +-1/8), norm weights around their identity (1 for llama-style, 0 for gemma's 1 + w)."""
    g = torch.Generator().manual_seed(seed)
    is_gemma = model.config.model_type.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            u = torch.rand(p.shape, generator=g) * 2 - 1
            if "norm" in name:
                p.copy_((0.0 if is_gemma else 1.0) + 0.2 * u)
            elif "embed_tokens" in name:
                p.copy_(u * (0.125 if is_gemma else 1.0))
            else:
                p.copy_(u / (p.shape[-1] ** 0.5))


def main():
    root = Path(__file__).resolve().parent.parent
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "tests/data/families"
    shared = Path(sys.argv[2]) if len(sys.argv) > 2 else root.parent / "shared/testdata/models/tiny/llama3-f32/ref.json"
    cases = json.load(open(shared))["cases"]
    for seed, (arch, cfg) in enumerate(configs().items()):
        cfg._attn_implementation = "eager"
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
        randomize(model, 1000 + seed)
        f32_dir, bf16_dir = out / f"{arch}-f32", out / f"{arch}-bf16"
        model.save_pretrained(f32_dir, safe_serialization=True)
        model.to(torch.bfloat16).save_pretrained(bf16_dir, safe_serialization=True)
        ref = {"cases": []}
        for dtype_name, folder in (("f32", f32_dir), ("bf16", bf16_dir)):
            m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
            for i, case in enumerate(cases):
                prompt = case["prompt_ids"]
                n_new = len(case["greedy_f32"])
                with torch.no_grad():
                    tokens, logits = greedy(m, prompt, n_new, "cpu")
                if dtype_name == "f32":
                    np.save(f32_dir / f"ref_logits_{len(prompt)}.npy", logits.astype(np.float32))
                    ref["cases"].append({"prompt_ids": prompt, "greedy_f32": tokens, "min_margin_f32": margin(logits)})
                else:
                    ref["cases"][i]["greedy_bf16"] = tokens
                print(arch, dtype_name, len(prompt), "margin", round(margin(logits), 4), tokens[:8], flush=True)
        for folder in (f32_dir, bf16_dir):
            (folder / "generation_config.json").unlink(missing_ok=True)
        json.dump(ref, open(f32_dir / "ref.json", "w"), indent=1)


if __name__ == "__main__":
    main()
