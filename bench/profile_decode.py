#!/usr/bin/env python3
"""One decode step's kernels, headinfer beside llama.cpp (issue 11: 8K decode is 1.09x llama.cpp's).

Reads Nsight Compute CSVs (`ncu --metrics gpu__time_duration.sum --csv --print-units base`) of a
run that ends with identical decode steps, finds the step in the kernel sequence (the shortest
period the sequence's tail repeats three times), and prints per step: the kernel time, the number
of kernels, and both split by what the kernels do (GEMV, attention, norms, rope, KV store, ...).
Kernels run serialized under ncu, so these are kernel times without launch gaps: the step's wall
time minus this sum is what launches and gaps cost.

usage: profile_decode.py NAME=ncu.csv [NAME=ncu.csv ...] [--json out.json]
"""
import csv
import json
import re
import sys

# What a kernel does, from its name (headinfer's and llama.cpp's), first match wins: combines
# before attention ("flash_attn_combine_results" is a combine), GEMV before add / mul
# ("mul_mat_vec"; headinfer's gemv_gated_kernel, gate and up with the activation, is a GEMV),
# rope before norm (llama.cpp's "rope_norm" is RoPE in its "norm" layout), activation before add /
# mul ("silu_mul"). headinfer's split-KV decode attention is "decode_kernel".
CATEGORIES = [
    ("attention combine", r"combine|merge|stream_k_fixup"),
    ("gemv", r"gemv|gemm|mul_mat_vec|mmv|cutlass|sm90_xmma|cublas"),
    ("attention", r"attention|decode_kernel|decode_split|flash_attn|fattn|sdpa"),
    ("rope", r"rope"),
    ("norm", r"norm"),
    ("kv store", r"copy_heads|set_rows|cpy|copy"),
    ("activation", r"silu|glu|gelu"),
    ("add / mul", r"add|bin_bcast|scale|mul"),
    ("logits / sampling", r"argmax|softcap|sample|topk|radix|scan"),
]


def category(name):
    n = name.lower()
    return next((cat for cat, pat in CATEGORIES if re.search(pat, n)), "other")


def read_ncu(path):
    """[(kernel name, ns)] in launch order from an ncu --csv log (one metric per kernel)."""
    rows = [r for r in csv.reader(open(path, newline="")) if len(r) > 5]
    head_i = next(i for i, r in enumerate(rows) if "Kernel Name" in r and "Metric Value" in r)
    head = rows[head_i]
    ki, mi, vi = head.index("Kernel Name"), head.index("Metric Name"), head.index("Metric Value")
    idi = head.index("ID") if "ID" in head else None
    out = []
    for r in rows[head_i + 1:]:
        if len(r) <= max(ki, mi, vi) or r[mi] != "gpu__time_duration.sum":
            continue
        name = r[ki].replace("(anonymous namespace)::", "")
        out.append((int(r[idi]) if idi is not None and r[idi].isdigit() else len(out), name,
                    float(r[vi].replace(",", ""))))
    out.sort(key=lambda t: t[0])
    return [(short(n), ns) for _, n, ns in out]


def short(name):
    """The kernel's name without its parameter list (template arguments kept, cut at 90)."""
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    return name[:cut][:90]


def step_period(names, min_p=8, max_p=5000, repeats=3):
    """The shortest P whose last `repeats` blocks of P names are identical, or None."""
    n = len(names)
    for p in range(min_p, min(max_p, n // repeats) + 1):
        tail = names[n - p:]
        if all(names[n - (k + 1) * p:n - k * p] == tail for k in range(1, repeats)):
            return p
    return None


def summarize(kernels, repeats=3):
    names = [k for k, _ in kernels]
    p = step_period(names, repeats=repeats)
    if p is None:
        raise ValueError("no repeating decode step at the end of the kernel sequence")
    steps = [kernels[len(kernels) - (k + 1) * p:len(kernels) - k * p] for k in range(repeats)]
    total = sum(ns for s in steps for _, ns in s) / repeats
    by_cat, count_cat, by_kernel = {}, {}, {}
    for s in steps:
        for name, ns in s:
            c = category(name)
            by_cat[c] = by_cat.get(c, 0.0) + ns / repeats
            count_cat[c] = count_cat.get(c, 0) + 1
            by_kernel[name] = by_kernel.get(name, 0.0) + ns / repeats
    count_cat = {c: v // repeats for c, v in count_cat.items()}
    return {"kernels_per_step": p, "step_ms": total / 1e6,
            "by_category_ms": {c: v / 1e6 for c, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
            "kernels_by_category": count_cat,
            "top_kernels_ms": {k: v / 1e6 for k, v in sorted(by_kernel.items(), key=lambda kv: -kv[1])[:15]}}


def table(results):
    names = list(results)
    cats = []
    for r in results.values():
        cats += [c for c in r["by_category_ms"] if c not in cats]
    lines = ["| per decode step | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines.append("| kernel time, ms (kernels) | " + " | ".join(
        f"{r['step_ms']:.3f} ({r['kernels_per_step']})" for r in results.values()) + " |")
    for c in cats:
        lines.append(f"| {c} | " + " | ".join(
            f"{r['by_category_ms'].get(c, 0.0):.3f} ({r['kernels_by_category'].get(c, 0)})"
            for r in results.values()) + " |")
    return "\n".join(lines)


def main(argv):
    out_json = None
    if "--json" in argv:
        i = argv.index("--json")
        out_json = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    if not argv or any("=" not in a for a in argv):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    results = {}
    for a in argv:
        name, path = a.split("=", 1)
        try:
            results[name] = summarize(read_ncu(path))
        except (OSError, ValueError, StopIteration) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 1
    print(table(results))
    for name, r in results.items():
        print(f"\n{name}: top kernels, ms per step")
        for k, ms in r["top_kernels_ms"].items():
            print(f"  {ms:8.3f}  {k}")
    if out_json:
        json.dump(results, open(out_json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
