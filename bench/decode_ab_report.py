"""The table of bench/decode_ab.sh: ms per token of every run, the mean per (label, context), the
change against the base, and the shares of two decode floors at the device copy rate measured in the
same call, as bench/report.py computes them: the (weights + KV) bytes a step reads (issue 11's 128K
bar) and the weight bytes alone (its 8K bar).

usage: decode_ab_report.py DIR BASE_COMMIT [--json out.json]
  Runs with prefill_first_s / prefill_warm_s (decode_ab.sh MODE=prefill) get the prefill table.
  BASE_COMMIT "none": a call without a base build (the first label run is the reference).
  DIR holds runs.jsonl (one JSON object a run: label, env, ctx, round, ms_per_token) and
  floors.json (bench/peers.py --floors).
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import shape_bytes  # noqa: E402


def reference_label(runs):
    """What the "vs base" column compares with: the base build, or (a call without one, BASE=none)
    the first label run, the candidate with no knob set."""
    labels = [r["label"] for r in runs]
    return "base" if "base" in labels else (labels[0] if labels else "base")


def group(runs):
    """The labels and contexts in the order they appear, and the runs of each (label, ctx)."""
    labels, ctxs, by = [], [], {}
    for r in runs:
        if r["label"] not in labels:
            labels.append(r["label"])
        if r["ctx"] not in ctxs:
            ctxs.append(r["ctx"])
        by.setdefault((r["label"], r["ctx"]), []).append(r)
    return labels, ctxs, by


def title(what, base_commit):
    """The table's first line: against the base commit, or the knobs of one build (BASE=none)."""
    if base_commit == "none":
        return f"{what} knobs on one build, against the build with none set (no base build)"
    return f"{what} A/B against base `{base_commit[:7] or '?'}`"


def summarize(runs, floors, shape="llama3-8b"):
    """{(label, ctx): mean ms} and the rows of the table, in the order labels appear, each against
    reference_label(runs)."""
    labels, ctxs, by_run = group(runs)
    by = {k: [r["ms_per_token"] for r in v] for k, v in by_run.items()}
    w_bytes, kv_tok = shape_bytes(shape)
    bw = floors.get("device_copy_gbps") if floors else None
    rows = []
    for ctx in ctxs:
        floor_ms = None if bw is None else (w_bytes + kv_tok * ctx) / (bw * 1e9) * 1e3
        weights_ms = None if bw is None else w_bytes / (bw * 1e9) * 1e3
        base = by.get((reference_label(runs), ctx))
        base_mean = statistics.mean(base) if base and None not in base else None
        for label in labels:
            v = by.get((label, ctx))
            if not v:
                continue
            ok = None not in v
            mean = statistics.mean(v) if ok else None
            rows.append({
                "ctx": ctx, "label": label, "runs_ms": v, "mean_ms": mean,
                "vs_base": None if mean is None or base_mean is None else mean / base_mean - 1.0,
                "floor_ms": floor_ms, "share_of_floor": None if mean is None or floor_ms is None else floor_ms / mean,
                "weights_floor_ms": weights_ms,
                "share_of_weights_floor": None if mean is None or weights_ms is None else weights_ms / mean,
            })
    return rows


def markdown(rows, base_commit, floors):
    f = lambda v, p="{:.3f}": "—" if v is None else p.format(v)  # noqa: E731
    out = [f"{title('Decode', base_commit)} (ms per token; mean of the rounds)", "",
           "| context | build | runs | mean | vs base | share of the (weights + KV) floor | share of the weight-read floor |",
           "|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        runs = " / ".join(f(x) for x in r["runs_ms"])
        out.append(f"| {r['ctx']} | {r['label']} | {runs} | {f(r['mean_ms'])} | {f(r['vs_base'], '{:+.1%}')} | "
                   f"{f(r['share_of_floor'], '{:.3f}')} | {f(r['share_of_weights_floor'], '{:.3f}')} |")
    if floors:
        out += ["", f"Floors in the same call: device copy {floors['device_copy_gbps']:.1f} GB/s, pinned H2D "
                f"{floors['pinned_h2d_gbps']:.1f} GB/s; a context's floors are its (weights + KV) bytes and the "
                "weight bytes alone at the device copy rate."]
    return "\n".join(out)


def summarize_prefill(runs):
    """MODE=prefill: per (label, ctx) the first and warm prefill seconds of every run, their means,
    and the warm mean against reference_label(runs)."""
    labels, ctxs, by = group(runs)
    mean = lambda v: statistics.mean(v) if v and None not in v else None  # noqa: E731
    ref = reference_label(runs)
    rows = []
    for ctx in ctxs:
        ref_warm = mean([r["prefill_warm_s"] for r in by.get((ref, ctx), [])])
        for label in labels:
            rs = by.get((label, ctx))
            if not rs:
                continue
            first = [r["prefill_first_s"] for r in rs]
            warm = [r["prefill_warm_s"] for r in rs]
            wm = mean(warm)
            rows.append({"ctx": ctx, "label": label, "first_s": first, "warm_s": warm, "first_mean_s": mean(first),
                         "warm_mean_s": wm,
                         "warm_vs_base": None if wm is None or ref_warm is None else wm / ref_warm - 1.0})
    return rows


def markdown_prefill(rows, base_commit):
    f = lambda v, p="{:.4f}": "—" if v is None else p.format(v)  # noqa: E731
    out = [f"{title('Prefill', base_commit)} (seconds; mean of the rounds)", "",
           "| context | build | first prefill, runs | warm prefill, runs | first | warm | warm vs base |",
           "|---:|---|---|---|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['ctx']} | {r['label']} | {' / '.join(f(x) for x in r['first_s'])} | "
                   f"{' / '.join(f(x) for x in r['warm_s'])} | {f(r['first_mean_s'])} | {f(r['warm_mean_s'])} | "
                   f"{f(r['warm_vs_base'], '{:+.1%}')} |")
    return "\n".join(out)


def main(argv):
    p = argparse.ArgumentParser(description="bench/decode_ab.sh's table")
    p.add_argument("dir", type=Path, help="holds runs.jsonl and floors.json")
    p.add_argument("base_commit")
    p.add_argument("--json", dest="json_out", help="also write the rows as JSON here")
    a = p.parse_args(argv)
    d, base_commit, json_out = a.dir, a.base_commit, a.json_out
    runs = [json.loads(line) for line in (d / "runs.jsonl").read_text().splitlines() if line.strip()]
    floors = None
    try:
        floors = json.loads((d / "floors.json").read_text()).get("floors")
    except (OSError, ValueError):
        pass
    if any("prefill_warm_s" in r for r in runs):  # MODE=prefill
        rows = summarize_prefill(runs)
        print(markdown_prefill(rows, base_commit))
    else:
        rows = summarize(runs, floors)
        print(markdown(rows, base_commit, floors))
    if json_out:
        Path(json_out).write_text(json.dumps({"base": base_commit, "floors": floors, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
