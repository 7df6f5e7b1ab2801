#!/usr/bin/env python3
"""Joins one benchmark run into bench/results/<date>-<gpu>.{json,md,png}.

inputs: peers.json (bench/peers.py) and one or more `headinfer bench --json` outputs, each with a
label (e.g. "headinfer 24GiB"). The Markdown table and the plot (decode s/token and GPU GiB
against context, one line per system) come from the same JSON, and so does the README section
(`--readme README.md` rewrites the part between the performance markers).

usage: report.py --peers peers.json --run "headinfer (24 GiB cap)=capped.json" [--run ...]
                 --out-dir bench/results --commit SHA --command "..." [--readme README.md]

Several --run with one label (e.g. one decode-only process per context) are joined into one system.
Rows of `headinfer bench --decode-only` runs are labelled decode-only in the table and the plot.
"""
import argparse
import datetime
import json
import re
from pathlib import Path


def gib(b):
    return None if b is None else b / 2**30


# A decode-only row (`headinfer bench --decode-only`) decoded over random KV values instead of a
# prefilled context: its decode speed is comparable, its prefill was never run, and it says so.
DECODE_ONLY_NOTE = "decode-only (random KV)"


def row_note(run, r):
    decode_only = ""
    if r.get("decode_only"):
        fill = r.get("random_fill_seconds")
        decode_only = DECODE_ONLY_NOTE + (f", filled in {fill:.1f} s" if fill is not None else "")
    notes = [n for n in (run.get("note", ""), decode_only) if n]
    return "; ".join(notes)


def system_label(label, r):
    """The label a row is shown under: decode-only rows say so even when their run's label does not."""
    if r.get("decode_only") and "decode-only" not in label:
        return f"{label}, decode-only"
    return label


def join_run(doc, label, run):
    """Adds one `headinfer bench --json` output under label; a repeated label appends its results."""
    if label not in doc["headinfer"]:
        doc["headinfer"][label] = run
        return
    have = doc["headinfer"][label]
    for key in ("model", "device", "gpu_mem", "offload"):
        if have.get(key) != run.get(key):
            raise SystemExit(f"report.py: --run '{label}' joins runs whose {key} differs "
                             f"({have.get(key)!r} vs {run.get(key)!r}): give them different labels")
    have["results"] = have["results"] + run["results"]


def rows(doc):
    out = []
    for sys_label, run in doc["headinfer"].items():
        for r in run["results"]:
            out.append(dict(system=system_label(sys_label, r), context=r["context"], prefill_s=r["prefill_seconds"],
                            decode_s=r["decode_seconds_per_token"], gpu_gib=gib(r["gpu_peak_bytes"]),
                            host_gib=gib(r.get("host_bytes")), link_gbps=r.get("link_gbps_achieved"),
                            decode_only=bool(r.get("decode_only")), note=row_note(run, r)))
    for p in doc["peers"].get("peers", []):
        cap = f", {p['gpu_cap_gib']:g} GiB cap" if p.get("gpu_cap_gib") else ""
        out.append(dict(system=p["system"] + cap, context=p["context"], prefill_s=p.get("prefill_seconds"),
                        decode_s=p.get("decode_seconds_per_token"), gpu_gib=gib(p.get("gpu_peak_bytes")),
                        host_gib=None, link_gbps=None, decode_only=False, note=p.get("error", "")))
    return out


def fmt(v, f="{:.3f}"):
    return "—" if v is None else f.format(v)


def markdown(doc):
    fl = doc["peers"]["floors"]
    lines = [f"# Benchmark {doc['date']} on {doc['gpu']}", "",
             f"Commit `{doc['commit']}`. Random weights (shape `{doc['shape']}`), batch 1, per ../shared/BENCH.md. "
             f"Command: `{doc['command']}`.", "",
             f"Floors measured in the same run: pinned H2D {fl['pinned_h2d_gbps']:.1f} GB/s, device copy "
             f"{fl['device_copy_gbps']:.0f} GB/s, bf16 GEMM {fl['bf16_gemm_tflops']:.0f} TFLOP/s; causal SDPA "
             + ", ".join(f"{c}: " + ", ".join(f"{k} {fmt(v, '{:.0f}')}" for k, v in d.items())
                         for c, d in fl["causal_sdpa_tflops"].items()) + " TFLOP/s.", "",
             "| system | context | prefill s | decode s/token | GPU peak GiB | host GiB | link GB/s | note |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    if any(r["decode_only"] for r in rows(doc)):
        lines[-2:-2] = ["Rows marked decode-only filled the KV with random values instead of prefilling "
                        "(`headinfer bench --decode-only`): their decode is measured over a full context, "
                        "and they have no prefill figures.", ""]
    for r in sorted(rows(doc), key=lambda r: (r["context"], r["system"])):
        lines.append(f"| {r['system']} | {r['context']} | {fmt(r['prefill_s'])} | {fmt(r['decode_s'], '{:.4f}')} | "
                     f"{fmt(r['gpu_gib'], '{:.2f}')} | {fmt(r['host_gib'], '{:.2f}')} | {fmt(r['link_gbps'], '{:.1f}')} | {r['note']} |")
    return "\n".join(lines) + "\n"


def plot(doc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    by_sys = {}
    for r in rows(doc):
        # decode-only points get their own line: a reader must not take them for prefilled runs
        name = r["system"] + (" (random KV)" if r["decode_only"] else "")
        by_sys.setdefault(name, []).append(r)
    for name, rs in by_sys.items():
        rs = sorted(rs, key=lambda r: r["context"])
        pts = [(r["context"], r["decode_s"]) for r in rs if r["decode_s"] is not None]
        if pts:
            ax1.plot(*zip(*pts), marker="o", label=name)
        pts = [(r["context"], r["gpu_gib"]) for r in rs if r["gpu_gib"] is not None]
        if pts:
            ax2.plot(*zip(*pts), marker="o", label=name)
    for ax, title in ((ax1, "decode s/token"), (ax2, "GPU peak GiB")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    ax1.set_yscale("log")
    ax1.legend(fontsize=7)
    fig.suptitle(f"{doc['shape']} on {doc['gpu']} ({doc['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--peers", required=True)
    p.add_argument("--run", action="append", default=[])
    p.add_argument("--out-dir", default="bench/results")
    p.add_argument("--commit", default="")
    p.add_argument("--command", default="bench/run_gpu.sh")
    p.add_argument("--shape", default="llama3-8b")
    p.add_argument("--readme")
    a = p.parse_args()
    peers = json.load(open(a.peers))
    doc = {"date": datetime.date.today().isoformat(), "gpu": peers["gpu"], "commit": a.commit, "command": a.command,
           "shape": a.shape, "random_weights": True, "peers": peers, "headinfer": {}}
    for item in a.run:
        label, path = item.split("=", 1)
        join_run(doc, label, json.load(open(path)))
    stem = Path(a.out_dir) / f"{doc['date']}-{re.sub(r'[^A-Za-z0-9]+', '-', doc['gpu']).strip('-')}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    json.dump(doc, open(f"{stem}.json", "w"), indent=1)
    md = markdown(doc)
    open(f"{stem}.md", "w").write(md)
    try:
        plot(doc, f"{stem}.png")
    except ImportError:
        pass
    if a.readme:
        text = open(a.readme).read()
        block = "<!-- perf:begin -->\n" + md.replace("# Benchmark", "### Benchmark", 1) + "<!-- perf:end -->"
        text = re.sub(r"<!-- perf:begin -->.*<!-- perf:end -->", block, text, flags=re.S) if "<!-- perf:begin -->" in text \
            else text + "\n## Performance\n\n" + block + "\n"
        open(a.readme, "w").write(text)
    print(stem)


if __name__ == "__main__":
    main()
