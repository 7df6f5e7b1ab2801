#!/usr/bin/env python3
"""Joins one benchmark run (bench/run_gpu.sh's parts) into <out-dir>/<date>-<gpu>.{json,md,png}.

Parts (files in --parts DIR, one set per step of run_gpu.sh):
  NAME.hi.json + NAME.label + NAME.cmd     `headinfer bench --json` (defaults unless the command
                                           says otherwise). Repeated contexts in one process
                                           (--ctx 8K,8K,8K): the process's first prefill is reported
                                           as "first", the later ones' median as "warm"; a context
                                           whose first row is not the process's first counts that
                                           row as its warm-up when more rows follow.
  NAME.tf.json + NAME.cmd                  bench/peers.py (transformers; the floors when measured)
  NAME.lcpp.jsonl + NAME.cmd + NAME.info   llama-batched-bench --output-format jsonl rows (the
                                           first row of the process is "first", later rows of the
                                           same prompt length "warm"; decode = t_tg / tg, its mean)
  gpu.csv                                  nvidia-smi's name, driver, memory, compute capability
The Markdown has the peers side by side (one row per measure, one column per system), the
issue-11 targets against figures of the same call, then every row in detail; the PNG plots
prefill seconds, decode s/token and GPU GiB against context, one line per system.

usage: report.py --parts DIR --out-dir bench/results --commit SHA --command "..." [--shape llama3-8b]
                 [--readme README.md] [--readme-section FILE]
       report.py --from-json bench/results/<stem>.json [--out-dir ...] [--readme README.md]
"""
import argparse
import datetime
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_gguf import N_VOCAB, SHAPES  # noqa: E402  (the shapes, for the weight and KV floors)


def gib(b):
    return None if b is None else b / 2**30


def median(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def shape_bytes(shape):
    """(weight bytes a decode step reads, KV bytes per token), bf16/f16: every matrix but the
    embedding table (one row of it is read), the output projection (the embedding when tied)."""
    s = SHAPES[shape]
    e, hd, ff = s["n_embd"], s["head_dim"], s["n_ff"]
    layer = e * hd * (2 * s["n_head"] + 2 * s["n_head_kv"]) + 3 * e * ff + 2 * e
    return 2 * (s["n_layer"] * layer + N_VOCAB * e + e), 2 * 2 * s["n_layer"] * s["n_head_kv"] * hd


# --- parts -> rows -------------------------------------------------------------------------------

def first_and_warm(results, key_ctx, key_prefill):
    """Rows of one process in order -> {ctx: (first-of-process prefill or None, warm prefills, rows)}."""
    by_ctx = {}
    for i, r in enumerate(results):
        by_ctx.setdefault(r[key_ctx], []).append((i, r))
    out = {}
    for ctx, rs in by_ctx.items():
        first = rs[0][1][key_prefill] if rs[0][0] == 0 else None
        later = rs[1:] if (rs[0][0] == 0 or len(rs) > 1) else rs  # a lone non-first row is warm
        out[ctx] = (first, [r[key_prefill] for _, r in later], [r for _, r in rs])
    return out


def expand_repeats(results):
    """`headinfer bench --repeat N` (if bench has it) puts the later prefills of a context in
    prefill_warm_all; as rows of their own they read like --ctx 8K,8K,8K's."""
    out = []
    for r in results:
        out.append(r)
        out += [dict(r, prefill_seconds=p) for p in r.get("prefill_warm_all") or []]
    return out


def headinfer_note(rs):
    """What the rows say of themselves: decode-only, and where bench reports them (fields the
    planner's chunk choice adds), the chunk it chose and the engine's set-up time."""
    r, notes = rs[0], []
    if r.get("decode_only"):
        notes.append("decode-only (random KV)")
    if r.get("chunk") is not None:
        notes.append(f"chunk {r['chunk']}" + (f", MLP {r['mlp_chunk']}" if r.get("mlp_chunk") is not None else ""))
    if r.get("engine_setup_seconds") is not None:
        notes.append(f"engine set-up {r['engine_setup_seconds']:.2f} s (first)")
    return "; ".join(notes)


def headinfer_rows(name, run, label, cmd):
    rows = []
    results = expand_repeats(run["results"])
    for ctx, (first, warm, rs) in first_and_warm(results, "context", "prefill_seconds").items():
        last = rs[-1]
        rows.append(dict(kind="headinfer", part=name, system=label, context=ctx, first_prefill_s=first,
                         prefill_s=median(warm), prefill_all=[r["prefill_seconds"] for r in rs],
                         decode_s=median([r["decode_seconds_per_token"] for r in rs]),
                         gpu_gib=gib(max(r["gpu_peak_bytes"] for r in rs)), host_gib=gib(last.get("host_bytes")),
                         link_gbps=last.get("link_gbps_achieved"), capped=bool(run.get("gpu_mem")),
                         kv_on_host="--offload all" in cmd, decode_only=bool(last.get("decode_only")),
                         note=headinfer_note(rs)))
    return rows


def transformers_rows(name, doc):
    rows = []
    for p in doc.get("peers", []):
        cap = p.get("gpu_cap_gib")
        note = p.get("error", "") or p.get("note", "")
        first_note = "first call = the process's first" if p.get("first_in_process") else "first call of this configuration"
        rows.append(dict(kind="transformers", part=name, system=p["system"] + (f", {cap:g} GiB cap" if cap else ""),
                         cache=p.get("cache"), context=p["context"], first_prefill_s=p.get("first_call_prefill_seconds"),
                         prefill_s=p.get("prefill_seconds"), prefill_all=p.get("prefill_seconds_all"),
                         decode_s=p.get("decode_seconds_per_token"), gpu_gib=gib(p.get("gpu_peak_bytes")),
                         host_gib=None, link_gbps=None, capped=bool(cap), kv_on_host=p.get("cache") == "offloaded",
                         decode_only=False, note="; ".join(x for x in (note, first_note if not note else "") if x)))
    return rows


def llamacpp_rows(name, lines, cmd, info):
    nkvo = " -nkvo" in f" {cmd} "
    m = re.search(r"gpu_used_mib: (\d+) \(baseline (\d+)\)", info)
    mib = int(m.group(1)) - int(m.group(2)) if m else None  # nvidia-smi's peak while it ran, less before
    rows = []
    for ctx, (first, warm, rs) in first_and_warm(lines, "pp", "t_pp").items():
        rows.append(dict(kind="llama.cpp", part=name, system="llama.cpp (f16, -fa on" + (", -nkvo)" if nkvo else ")"),
                         context=ctx, first_prefill_s=first, prefill_s=median(warm), prefill_all=[r["t_pp"] for r in rs],
                         decode_s=median([r["t_tg"] / r["tg"] for r in rs if r["tg"]]), gpu_gib=mib / 1024 if mib else None,
                         host_gib=None, link_gbps=None, capped=False, kv_on_host=nkvo, decode_only=False,
                         note="GPU: nvidia-smi's peak, CUDA context included" if mib else ""))
    return rows


def read_parts(d):
    d = Path(d)
    rows, runs, floors, versions = [], [], None, {}
    text = lambda p: p.read_text().strip() if p.exists() else ""  # noqa: E731
    for f in sorted(d.glob("*.hi.json")):
        name = f.name[:-len(".hi.json")]
        cmd, label = text(d / f"{name}.cmd"), text(d / f"{name}.label") or name
        try:
            run = json.loads(f.read_text())
        except json.JSONDecodeError:
            runs.append(dict(part=name, kind="headinfer", command=cmd, error="no JSON (failed or timed out)"))
            continue
        runs.append(dict(part=name, kind="headinfer", command=cmd, label=label, raw=run))
        rows += headinfer_rows(name, run, label, cmd)
    for f in sorted(d.glob("*.tf.json")):
        name = f.name[:-len(".tf.json")]
        doc = json.loads(f.read_text())
        runs.append(dict(part=name, kind="transformers", command=text(d / f"{name}.cmd"), raw=doc))
        rows += transformers_rows(name, doc)
        floors = doc.get("floors") or floors
        versions.update({k: doc[k] for k in ("torch", "transformers") if k in doc})
    for f in sorted(d.glob("*.lcpp.jsonl")):
        name = f.name[:-len(".lcpp.jsonl")]
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        cmd, info = text(d / f"{name}.cmd"), text(d / f"{name}.info")
        runs.append(dict(part=name, kind="llama.cpp", command=cmd, info=info, raw=lines))
        rows += llamacpp_rows(name, lines, cmd, info)
        m = re.search(r"build (\d+), commit ([0-9a-f]+)", info)  # `llama-batched-bench --version`
        if m:
            # the carried tree is a one-commit snapshot: its build number (commit count) is not known
            versions["llama.cpp"] = f"commit {m.group(2)}" + (f", build {m.group(1)}" if int(m.group(1)) > 1 else "")
    for f in sorted(d.glob("*.failed")):  # a step that failed before writing its part
        name = f.name[:-len(".failed")]
        if not any(r["part"] == name for r in runs):
            runs.append(dict(part=name, kind="step", command=text(d / f"{name}.cmd"),
                             error=f"failed: see bench-logs/{name}.log"))
    return rows, runs, floors, versions


# --- side by side and targets ------------------------------------------------------------------

def pick(rows, kind, ctx, **want):
    for r in rows:
        if r["kind"] == kind and r["context"] == ctx and all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def fmt(v, f="{:.3f}"):
    return "—" if v is None else f.format(v)


def ms(r):
    return None if r is None or r.get("decode_s") is None else 1000 * r["decode_s"]


def side_by_side(rows):
    """(measure, {column: text}) for the summary table."""
    K8, K16, K32, K128 = 8192, 16384, 32768, 131072
    hi = lambda ctx, **w: pick(rows, "headinfer", ctx, **w)  # noqa: E731
    tf = lambda ctx, cache, capped=False: pick(rows, "transformers", ctx, cache=cache, capped=capped)  # noqa: E731
    lc = lambda ctx, nkvo=False: pick(rows, "llama.cpp", ctx, kv_on_host=nkvo)  # noqa: E731

    def cell(r, key, f="{:.3f}"):
        if r is None:
            return "—"
        if key == "prefill_best":  # warm where measured, else the first (said so)
            if r.get("prefill_s") is not None:
                return f.format(r["prefill_s"])
            return "—" if r.get("first_prefill_s") is None else f.format(r["first_prefill_s"]) + " (first)"
        if r.get(key) is None:
            return r["note"].split(";")[0] if r.get("note") and "error" not in key else "—"
        return f.format(r[key] * (1000 if key == "decode_s" else 1))

    cols = ("headinfer (defaults)", "transformers default", "transformers offloaded", "transformers static+compile",
            "llama.cpp")

    def line(measure, key, ctx, h, capped=False, nkvo=False, f="{:.3f}"):
        return (measure, {cols[0]: cell(h, key, f), cols[1]: cell(tf(ctx, "default", capped), key, f),
                          cols[2]: cell(tf(ctx, "offloaded", capped), key, f),
                          cols[3]: cell(tf(ctx, "static-compile", capped), key, f),
                          cols[4]: cell(None if capped else lc(ctx, nkvo), key, f)})

    u = dict(capped=False, kv_on_host=False)
    streamed = pick(rows, "headinfer", K16, kv_on_host=True, system="headinfer (24 GiB cap, all streamed)")
    hybrid = pick(rows, "headinfer", K16, kv_on_host=True, system="headinfer (24 GiB cap, hybrid)")
    out = [line("prefill 8K s, first of the process (transformers: its first call)", "first_prefill_s", K8, hi(K8, **u)),
           line("prefill 8K s, warm (median)", "prefill_s", K8, hi(K8, **u)),
           line("prefill 32K s (warm where measured)", "prefill_best", K32, hi(K32, **u)),
           line("prefill 128K s, uncapped (warm where measured)", "prefill_best", K128, hi(K128, **u)),
           line("prefill 128K s, 24 GiB cap, first of the process", "first_prefill_s", K128,
                hi(K128, capped=True, kv_on_host=False), capped=True),
           line("decode 8K ms/token", "decode_s", K8, hi(K8, **u), f="{:.2f}"),
           line("decode 32K ms/token", "decode_s", K32, hi(K32, **u), f="{:.2f}"),
           line("decode 128K ms/token, uncapped", "decode_s", K128, hi(K128, **u), f="{:.2f}"),
           line("decode 128K ms/token, 24 GiB cap", "decode_s", K128, hi(K128, capped=True, kv_on_host=False),
                capped=True, f="{:.2f}")]
    m, c = line("decode 16K ms/token, KV on the host (headinfer streamed / hybrid; llama.cpp -nkvo)", "decode_s",
                K16, streamed, nkvo=True, f="{:.2f}")
    c[cols[0]] = f"{fmt(ms(streamed), '{:.2f}')} / {fmt(ms(hybrid), '{:.2f}')}"
    out.append((m, c))
    return cols, out


def targets(rows, floors, shape):
    """Issue 11's bars, each with the figures of this call it rests on; None where one is missing."""
    K8, K128 = 8192, 131072
    u = dict(capped=False, kv_on_host=False)
    h8, h128 = pick(rows, "headinfer", K8, **u), pick(rows, "headinfer", K128, **u)
    h128c = pick(rows, "headinfer", K128, capped=True, kv_on_host=False)
    h128s = pick(rows, "headinfer", K128, system="headinfer (24 GiB cap, all streamed)")
    t8, t128 = pick(rows, "transformers", K8, cache="default", capped=False), \
        pick(rows, "transformers", K128, cache="default", capped=False)
    l8 = pick(rows, "llama.cpp", K8, kv_on_host=False)
    w_bytes, kv_tok = shape_bytes(shape)
    bw = floors["device_copy_gbps"] * 1e9 if floors else None  # read + write bytes per second
    link = floors["pinned_h2d_gbps"] if floors else None

    def ratio(a, b):
        return None if a is None or b is None else a / b

    g = lambda r, k: None if r is None else r.get(k)  # noqa: E731
    out = []

    def add(what, bar, value, ok, basis):
        # Three decimals: two can round a miss onto its bar (0.945 against 0.95).
        out.append((what, bar, fmt(value, "{:.3f}"), "—" if ok is None else ("met" if ok else "NOT met"), basis))

    v = ratio(g(h8, "first_prefill_s"), g(t8, "prefill_s"))
    add("8K prefill, first of the process / transformers default (warm)", "≤ 1.0", v, None if v is None else v <= 1.0,
        f"{fmt(g(h8, 'first_prefill_s'))} s / {fmt(g(t8, 'prefill_s'))} s")
    v = ratio(g(h8, "prefill_s"), g(t8, "prefill_s"))
    add("8K prefill, warm / transformers default", "≤ 0.8", v, None if v is None else v <= 0.8,
        f"{fmt(g(h8, 'prefill_s'))} s / {fmt(g(t8, 'prefill_s'))} s")
    v = ratio(g(h128, "prefill_s"), g(t128, "prefill_s"))
    add("128K prefill uncapped / transformers default", "≤ 0.85", v, None if v is None else v <= 0.85,
        f"{fmt(g(h128, 'prefill_s'))} s / {fmt(g(t128, 'prefill_s'))} s")
    v = ratio(g(h128c, "first_prefill_s") or g(h128c, "prefill_s"), g(t128, "prefill_s"))
    add("128K prefill, 24 GiB cap, defaults / transformers uncapped", "≤ 1.0", v, None if v is None else v <= 1.0,
        f"{fmt(g(h128c, 'first_prefill_s') or g(h128c, 'prefill_s'))} s / {fmt(g(t128, 'prefill_s'))} s")
    v = ratio(g(h8, "decode_s"), g(l8, "decode_s"))
    add("8K decode / llama.cpp's", "< 1.0", v, None if v is None else v < 1.0,
        f"{fmt(ms(h8), '{:.2f}')} ms / {fmt(ms(l8), '{:.2f}')} ms")
    # What an 8K step must read: the weights (all but the embedding table) and 8K positions of KV,
    # 16.08 GB for llama3-8b; the issue's own figures use this (7.17 ms "about 75%", llama.cpp's
    # 6.62 ms "about 81%"). The weights alone are given beside it.
    floor8 = None if bw is None else (w_bytes + kv_tok * K8) / bw
    v = ratio(floor8, g(h8, "decode_s"))
    v_w = ratio(None if bw is None else w_bytes / bw, g(h8, "decode_s"))
    add("8K decode, share of the (weights + KV) read floor", "≥ 0.85", v, None if v is None else v >= 0.85,
        f"floor {fmt(None if floor8 is None else floor8 * 1000, '{:.2f}')} ms = {(w_bytes + kv_tok * K8) / 1e9:.2f} GB "
        f"(weights but the embedding table, and 8K positions of KV) at the device copy rate; "
        f"of the weights alone ({w_bytes / 1e9:.2f} GB): {fmt(v_w, '{:.2f}')}")
    floor128 = None if bw is None else (w_bytes + kv_tok * K128) / bw
    v = ratio(floor128, g(h128, "decode_s"))
    add("128K decode uncapped, share of the (weights + KV) floor", "≥ 0.80", v, None if v is None else v >= 0.80,
        f"floor {fmt(None if floor128 is None else floor128 * 1000, '{:.2f}')} ms = "
        f"{(w_bytes + kv_tok * K128) / 1e9:.2f} GB")
    v = ratio(g(h128s, "link_gbps"), link)
    add("128K decode, every head streamed: share of the pinned link", "≥ 0.95", v, None if v is None else v >= 0.95,
        f"{fmt(g(h128s, 'link_gbps'), '{:.1f}')} / {fmt(link, '{:.1f}')} GB/s")
    return out


# --- rendering ---------------------------------------------------------------------------------

def lcpp_phrase(doc):
    """The header's llama.cpp peer: its version, or that this set has no llama.cpp row."""
    version = doc.get("versions", {}).get("llama.cpp")
    if version is None and not any(r.get("kind") == "llama.cpp" for r in doc["rows"]):
        return "llama.cpp not run in this set" + (f" ({doc['no_lcpp']})" if doc.get("no_lcpp") else "")
    return f"llama.cpp {version or '?'} (llama-batched-bench -npl 1 -fa on -ngl 99)"


def markdown(doc):
    rows, fl = doc["rows"], doc.get("floors")
    v = doc.get("versions", {})
    lines = [f"# Benchmark {doc['date']} on {doc['gpu']}", "",
             f"Commit `{doc['commit']}`. Random weights (shape `{doc['shape']}`; bf16 for headinfer and "
             f"transformers, f16 GGUF for llama.cpp), batch 1, {doc.get('n_decode', 32)} decoded tokens, per "
             f"../shared/BENCH.md. Command: `{doc['command']}`. Peers {doc.get('where', 'in the same call')}: transformers "
             f"{v.get('transformers', '?')} (PyTorch {v.get('torch', '?')}; generate() with "
             f"attention_mask=ones, SDPA), " + lcpp_phrase(doc) + "."
             + (f" cuDNN: {doc['cudnn']}." if doc.get("cudnn") else ""), ""]
    if fl:
        lines += ["Floors measured " + doc.get("where_floors", "in the same call") + ": pinned H2D {:.1f} GB/s, "
                  "device copy {:.0f} GB/s, bf16 GEMM "
                  "{:.0f} TFLOP/s; causal SDPA ".format(fl["pinned_h2d_gbps"], fl["device_copy_gbps"],
                                                         fl["bf16_gemm_tflops"])
                  + ", ".join(f"{c}: " + ", ".join(f"{k} {fmt(x, '{:.0f}')}" for k, x in d.items())
                              for c, d in fl["causal_sdpa_tflops"].items()) + " TFLOP/s.", ""]
    cols, table = side_by_side(rows)
    lines += ["Side by side (headinfer with its default flags: no --chunk, no tuning; \"first\" is the first "
              "prefill of the process, \"warm\" the median of later ones in the same process):", "",
              "| measure | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {m} | " + " | ".join(c[k] for k in cols) + " |" for m, c in table]
    lines += ["", "Issue 11's targets against " + doc.get('where_targets', 'this call') + ":", "", "| target | bar | measured | | from |",
              "|---|---|---:|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in targets(rows, fl, doc["shape"])]
    lines += ["", "Every row:", "",
              "| system | context | prefill s, first | prefill s, warm | decode ms/token | GPU peak GiB | host GiB | "
              "link GB/s | note |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["context"], r["kind"], r["system"])):
        lines.append(f"| {r['system']} | {r['context']} | {fmt(r['first_prefill_s'])} | {fmt(r['prefill_s'])} | "
                     f"{fmt(ms(r), '{:.2f}')} | {fmt(r['gpu_gib'], '{:.2f}')} | {fmt(r['host_gib'], '{:.2f}')} | "
                     f"{fmt(r['link_gbps'], '{:.1f}')} | {r['note']} |")
    failed = [r for r in doc["runs"] if r.get("error")]
    if failed:
        lines += [""] + [f"Not measured: {r['part']} ({r['error']}): `{r['command']}`" for r in failed]
    lines += ["", "Commands:", ""] + [f"- {r['part']}: `{r['command']}`" for r in doc["runs"]
                                      if r.get("command") and not r.get("error")]
    return "\n".join(lines) + "\n"


def plot(doc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    by_sys = {}
    for r in doc["rows"]:
        by_sys.setdefault(r["system"] + (" (random KV)" if r["decode_only"] else ""), []).append(r)
    for name, rs in sorted(by_sys.items()):
        rs = sorted(rs, key=lambda r: r["context"])
        for ax, key in zip(axes, ("prefill_s", "decode_s", "gpu_gib")):
            pts = [(r["context"], r[key] if key != "prefill_s" else (r["prefill_s"] or r["first_prefill_s"]))
                   for r in rs]
            pts = [p for p in pts if p[1] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
    for ax, title in zip(axes, ("prefill s (warm; first where only one)", "decode s/token", "GPU peak GiB")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=6)
    fig.suptitle(f"{doc['shape']} on {doc['gpu']} ({doc['date']}, commit {doc['commit']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def readme_block(md):
    return "<!-- perf:begin -->\n" + md.replace("# Benchmark", "### Benchmark", 1) + "<!-- perf:end -->"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--parts", help="bench/run_gpu.sh's parts folder")
    src.add_argument("--from-json", help="re-render a results JSON this script wrote")
    p.add_argument("--out-dir", default="bench/results")
    p.add_argument("--commit", default="")
    p.add_argument("--command", default="bench/run_gpu.sh")
    p.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    p.add_argument("--n-decode", type=int, default=32)
    p.add_argument("--readme", help="rewrite the README's block between the perf markers")
    p.add_argument("--readme-section", help="write that block to this file")
    a = p.parse_args()
    if a.from_json:
        doc = json.load(open(a.from_json))
    else:
        rows, runs, floors, versions = read_parts(a.parts)
        if not runs:
            sys.exit(f"error: {a.parts}: no parts (*.hi.json, *.tf.json, *.lcpp.jsonl)")
        gpu_csv = Path(a.parts) / "gpu.csv"
        gpu = next((r["raw"]["gpu"] for r in runs if r["kind"] == "transformers"), None)
        if gpu is None and gpu_csv.exists():
            gpu = gpu_csv.read_text().splitlines()[-1].split(",")[0].strip()
        doc = {"date": datetime.date.today().isoformat(), "gpu": gpu or "unknown GPU",
               "gpu_smi": gpu_csv.read_text() if gpu_csv.exists() else None, "commit": a.commit,
               "command": a.command, "shape": a.shape, "n_decode": a.n_decode, "random_weights": True,
               "versions": versions, "floors": floors, "rows": rows, "runs": runs}
    stem = Path(a.out_dir) / f"{doc['date']}-{re.sub(r'[^A-Za-z0-9]+', '-', doc['gpu']).strip('-')}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    if not a.from_json:
        json.dump(doc, open(f"{stem}.json", "w"), indent=1)
    md = markdown(doc)
    open(f"{stem}.md", "w").write(md)
    try:
        plot(doc, f"{stem}.png")
    except ImportError:
        print("report.py: no matplotlib, no PNG", file=sys.stderr)
    if a.readme_section:
        open(a.readme_section, "w").write(readme_block(md) + "\n")
    if a.readme:
        text = open(a.readme).read()
        if "<!-- perf:begin -->" not in text:
            sys.exit(f"error: {a.readme}: no <!-- perf:begin --> ... <!-- perf:end --> block")
        open(a.readme, "w").write(re.sub(r"<!-- perf:begin -->.*<!-- perf:end -->", lambda _: readme_block(md), text,
                                         flags=re.S))
    print(stem)


if __name__ == "__main__":
    main()
