"""Tests of the benchmark harness that run on a CPU in seconds (pytest; torch and transformers
for the peer's smoke test, numpy for the GGUF writer):
    "$(scripts/python-env.sh)" -m pytest bench/test_bench.py   (scripts/test.sh runs it)
The GPU parts (floors, llama.cpp with CUDA, the 8B shapes) run only in bench/run_gpu.sh."""
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import report  # noqa: E402
from make_gguf import N_VOCAB, SHAPES, llama3_rope_factors, read_vocab  # noqa: E402

TOKENIZER = BENCH.parent.parent / "shared/testdata/tokenizers/llama3/tokenizer.json"


def hi_result(ctx, prefill, decode, peak=17 << 30, link=0.0):
    # the fields `headinfer bench --json` writes per context (src/cli/bench_cmd.cpp)
    return {"context": ctx, "decode_only": False, "prefill_seconds": prefill, "decode_seconds_per_token": decode,
            "gpu_peak_bytes": peak, "host_bytes": 0, "link_bytes_per_token": 0, "link_gbps_achieved": link}


def write_parts(d):
    def hi(name, label, cmd, results, gpu_mem=0):
        (d / f"{name}.hi.json").write_text(json.dumps({"model": "llama3-8b", "device": "cuda", "n_decode": 32,
                                                       "gpu_mem": gpu_mem, "offload": "auto", "results": results}))
        (d / f"{name}.label").write_text(label)
        (d / f"{name}.cmd").write_text(cmd)
    hi("hi-8k", "headinfer (defaults)", "headinfer bench --ctx 8K,8K,8K",
       [hi_result(8192, 1.40, 0.0070), hi_result(8192, 0.36, 0.0071), hi_result(8192, 0.30, 0.0072)])
    hi("hi-128k", "headinfer (defaults)", "headinfer bench --ctx 32K,128K,128K",
       [hi_result(32768, 2.0, 0.008), hi_result(131072, 11.0, 0.015), hi_result(131072, 9.0, 0.015)])
    hi("hi-128k-streamed", "headinfer (24 GiB cap, all streamed)", "headinfer bench --ctx 128K --offload all",
       [hi_result(131072, 13.0, 0.31, link=53.0)], gpu_mem=24 << 30)
    hi("hi-128k-cap", "headinfer (defaults, 24 GiB cap)", "headinfer bench --ctx 128K --gpu-mem 24GiB",
       [hi_result(131072, 12.5, 0.19)], gpu_mem=24 << 30)
    (d / "hi-broken.hi.json").write_text("")  # a step that died: reported as not measured
    (d / "hi-broken.cmd").write_text("headinfer bench --ctx 1M")
    peer = lambda ctx, cache, cap, pre, dec, first: {  # noqa: E731
        "system": f"transformers ({cache} cache)", "cache": cache, "context": ctx, "gpu_cap_gib": cap,
        "first_in_process": first, "first_call_prefill_seconds": pre * 2, "prefill_seconds": pre,
        "decode_seconds_per_token": dec, "gpu_peak_bytes": 16 << 30}
    tf = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "transformers": "5.17.0",
          "floors": {"pinned_h2d_gbps": 55.0, "device_copy_gbps": 3000.0, "bf16_gemm_tflops": 700.0,
                     "causal_sdpa_tflops": {"8192": {"cudnn": 500.0, "flash": 300.0}}},
          "peers": [peer(8192, "default", None, 0.26, 0.020, True), peer(131072, "default", None, 11.7, 0.026, False),
                    {"system": "transformers (default cache)", "cache": "default", "context": 131072,
                     "gpu_cap_gib": 24.0, "error": "out of memory", "gpu_peak_bytes": 24 << 30}]}
    (d / "tf.tf.json").write_text(json.dumps(tf))
    (d / "tf.cmd").write_text("peers.py")
    rows = [{"pp": 8192, "tg": 32, "pl": 1, "t_pp": t, "t_tg": 0.2118, "n_kv_max": 8448} for t in (0.5, 0.36, 0.35, 0.34)]
    (d / "lcpp-8k.lcpp.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (d / "lcpp-8k.cmd").write_text("llama-batched-bench -npl 1 -fa on -ngl 99 -npp 8192,8192,8192,8192")
    (d / "lcpp-8k.info").write_text("version: 0.5.0-dev (build 0, commit 0c1e570)\n"
                                    "gpu_used_mib: 17500 (baseline 500)\n")
    nkvo = {"pp": 16384, "tg": 32, "pl": 1, "t_pp": 30.0, "t_tg": 9.92, "n_kv_max": 16640}
    (d / "lcpp-16k.lcpp.jsonl").write_text(json.dumps(nkvo) + "\n")
    (d / "lcpp-16k.cmd").write_text("llama-batched-bench -nkvo -npp 16384")


def test_report_first_and_warm(tmp_path):
    write_parts(tmp_path)
    rows, runs, floors, versions = report.read_parts(tmp_path)
    h8 = report.pick(rows, "headinfer", 8192, capped=False, kv_on_host=False)
    assert h8["first_prefill_s"] == 1.40 and h8["prefill_s"] == pytest.approx(0.33)  # median of 0.36, 0.30
    h32 = report.pick(rows, "headinfer", 32768, capped=False)
    assert h32["first_prefill_s"] == 2.0 and h32["prefill_s"] is None  # first of the process, nothing warm
    h128 = report.pick(rows, "headinfer", 131072, capped=False, kv_on_host=False)
    assert h128["first_prefill_s"] is None and h128["prefill_s"] == 9.0  # the first 128K row was the warm-up
    cap = report.pick(rows, "headinfer", 131072, capped=True, kv_on_host=False)
    assert cap["first_prefill_s"] == 12.5 and cap["prefill_s"] is None
    l8 = report.pick(rows, "llama.cpp", 8192, kv_on_host=False)
    assert l8["first_prefill_s"] == 0.5 and l8["prefill_s"] == 0.35
    assert l8["decode_s"] == pytest.approx(0.2118 / 32)
    assert l8["gpu_gib"] == pytest.approx(17000 / 1024)
    assert report.pick(rows, "llama.cpp", 16384, kv_on_host=True)["decode_s"] == pytest.approx(9.92 / 32)
    assert versions == {"torch": "2.11.0", "transformers": "5.17.0", "llama.cpp": "commit 0c1e570"}
    assert floors["device_copy_gbps"] == 3000.0
    assert [r["part"] for r in runs if r.get("error")] == ["hi-broken"]


def test_report_bench_repeat_fields():
    # the same measurements as --ctx 8K,8K,8K, from `headinfer bench --ctx 8K --repeat 3`
    run = {"results": [dict(hi_result(8192, 1.40, 0.0070), prefill_warm_all=[0.36, 0.30])], "gpu_mem": 0}
    (r,) = report.headinfer_rows("x", run, "headinfer (defaults)", "headinfer bench --ctx 8K --repeat 3")
    assert r["first_prefill_s"] == 1.40 and r["prefill_s"] == pytest.approx(0.33) and r["prefill_all"] == [1.40, 0.36, 0.30]


def test_report_targets(tmp_path):
    write_parts(tmp_path)
    rows, _, floors, _ = report.read_parts(tmp_path)
    t = {what: (value, verdict) for what, _, value, verdict, _ in report.targets(rows, floors, "llama3-8b")}
    assert t["8K prefill, first of the process / transformers default (warm)"] == (f"{1.40 / 0.26:.3f}", "NOT met")
    assert t["8K prefill, warm / transformers default"] == (f"{0.33 / 0.26:.3f}", "NOT met")
    assert t["128K prefill uncapped / transformers default"] == (f"{9.0 / 11.7:.3f}", "met")
    assert t["128K prefill, 24 GiB cap, defaults / transformers uncapped"] == (f"{12.5 / 11.7:.3f}", "NOT met")
    assert t["8K decode / llama.cpp's"] == (f"{0.0071 / (0.2118 / 32):.3f}", "NOT met")
    w, kv = report.shape_bytes("llama3-8b")
    assert kv == 128 * 1024  # BENCH.md: 128 KiB per token
    assert w == 2 * (8_030_261_248 - N_VOCAB * 4096)  # llama3-8b's parameter count, less the embedding table
    assert t["8K decode, share of the (weights + KV) read floor"][0] == f"{(w + kv * 8192) / 3000e9 / 0.0071:.3f}"
    assert t["128K decode, every head streamed: share of the pinned link"] == (f"{53 / 55:.3f}", "met")


def test_report_renders(tmp_path):
    parts, out = tmp_path / "parts", tmp_path / "out"
    parts.mkdir()
    write_parts(parts)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Performance\n\n<!-- perf:begin -->\nold\n<!-- perf:end -->\n\nafter\n")
    r = subprocess.run([sys.executable, str(BENCH / "report.py"), "--parts", str(parts), "--out-dir", str(out),
                        "--commit", "abc1234", "--readme", str(readme)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    md = Path(r.stdout.strip() + ".md").read_text()
    assert "| prefill 8K s, first of the process (transformers: its first call) | 1.400 | 0.520 | — | — | 0.500 |" in md
    assert "out of memory" in md and "Not measured: hi-broken" in md
    text = readme.read_text()
    assert "old" not in text and "### Benchmark" in text and text.endswith("\n\nafter\n")
    r = subprocess.run([sys.executable, str(BENCH / "report.py"), "--from-json", r.stdout.strip() + ".json",
                        "--out-dir", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and Path(r.stdout.strip() + ".md").read_text() == md


def test_report_header_names_a_missing_llamacpp(tmp_path):
    write_parts(tmp_path)
    for f in tmp_path.glob("lcpp-*"):
        f.unlink()
    rows, runs, floors, versions = report.read_parts(tmp_path)
    doc = dict(date="2026-12-07", gpu="H100", commit="abc1234", command="x", shape="llama3-8b", rows=rows,
               runs=runs, floors=floors, versions=versions, no_lcpp="its build did not fit")
    header = report.markdown(doc).splitlines()[2]
    assert "llama.cpp not run in this set (its build did not fit)." in header and "llama.cpp ?" not in header
    write_parts(tmp_path)
    rows, _, _, versions = report.read_parts(tmp_path)
    assert "llama.cpp commit 0c1e570 (llama-batched-bench" in report.markdown(dict(doc, rows=rows, versions=versions))


def test_report_rejects_empty_parts(tmp_path):
    r = subprocess.run([sys.executable, str(BENCH / "report.py"), "--parts", str(tmp_path)], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "no parts" in r.stderr


def test_rope_factors_match_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    for shape in ("llama3-8b", "llama3.2-1b"):
        s = SHAPES[shape]
        cfg = transformers.LlamaConfig(
            hidden_size=s["n_embd"], num_attention_heads=s["n_head"], head_dim=s["head_dim"],
            rope_theta=s["rope_base"], max_position_embeddings=131072,
            rope_scaling={"rope_type": "llama3", "factor": s["rope_factor"], "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
        plain = 1.0 / s["rope_base"] ** (torch.arange(0, s["head_dim"], 2, dtype=torch.float64) / s["head_dim"])
        # llama.cpp divides each frequency by rope_freqs; transformers' factors in f32 arithmetic:
        # a relative tolerance of a few f32 ulps (2^-23 each)
        factors = llama3_rope_factors(s["head_dim"], s["rope_base"], s["rope_factor"])
        assert (factors >= 1).all() and factors.max() == s["rope_factor"] and factors.min() == 1
        got = plain / torch.tensor(factors, dtype=torch.float64)
        assert torch.allclose(got, scaled.double(), rtol=4 * 2**-23, atol=0)


@pytest.mark.skipif(not TOKENIZER.exists(), reason="needs ../shared/testdata")
def test_vocab_is_llama3s():
    tokens, types, merges = read_vocab(TOKENIZER)
    assert len(tokens) == N_VOCAB and tokens[128000] == "<|begin_of_text|>" and types[128000] == 3
    assert types[0] == 1 and tokens[0] == "!" and merges[0] == "Ġ Ġ" and all(" " in m for m in merges)
    assert 5 not in types  # no holes in llama3's ids


@pytest.mark.skipif(not TOKENIZER.exists(), reason="needs ../shared/testdata")
def test_gguf_writer_tiny(tmp_path):
    gguf_py = BENCH.parent / "build-llamacpp/llama.cpp/gguf-py"
    if not gguf_py.exists():
        pytest.skip("no unpacked llama.cpp (bench/llamacpp_build.sh unpacks .carry/llamacpp.tar.gz)")
    np = pytest.importorskip("numpy")
    out = tmp_path / "tiny.gguf"
    r = subprocess.run([sys.executable, str(BENCH / "make_gguf.py"), "--shape", "tiny", "--tokenizer", str(TOKENIZER),
                        "-o", str(out)], capture_output=True, text=True, env={"PYTHONPATH": str(gguf_py)})
    assert r.returncode == 0, r.stderr
    sys.path.insert(0, str(gguf_py))
    import gguf
    g = gguf.GGUFReader(out)
    s = SHAPES["tiny"]
    t = {x.name: x for x in g.tensors}
    assert len(t) == 4 + 9 * s["n_layer"]
    q = t["blk.1.attn_q.weight"]
    assert list(q.shape) == [s["n_embd"], s["n_head"] * s["head_dim"]] and q.tensor_type.name == "F16"
    a, b = np.asarray(t["blk.0.ffn_up.weight"].data), np.asarray(t["blk.1.ffn_up.weight"].data)
    assert np.abs(a).max() > 0 and not np.array_equal(a, b)  # random, and not one slice for every tensor
    assert 0.015 < float(np.std(a.astype(np.float32))) < 0.025  # std 0.02
    assert g.fields["tokenizer.ggml.tokens"].data and len(g.fields["tokenizer.ggml.tokens"].data) == N_VOCAB
    assert math.isclose(float(t["rope_freqs.weight"].data[-1]), s["rope_factor"])


def test_peers_rejects_bad_configs():
    pytest.importorskip("torch")
    r = subprocess.run([sys.executable, str(BENCH / "peers.py"), "--device", "cpu", "--configs", "default,paged"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown cache 'paged'" in r.stderr
    r = subprocess.run([sys.executable, str(BENCH / "peers.py"), "--device", "cpu", "--configs", "default@x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "must be a number of GiB" in r.stderr


def test_peers_smoke_cpu():
    pytest.importorskip("transformers")
    r = subprocess.run([sys.executable, str(BENCH / "peers.py"), "--shape", "tiny", "--device", "cpu", "--ctx", "37",
                        "--configs", "default,static-compile,offloaded", "--n-decode", "3", "--runs", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    d, s, o = doc["peers"]
    assert d["first_in_process"] and not s["first_in_process"]
    for p in (d, s):
        assert "error" not in p and len(p["prefill_seconds_all"]) == 2
        # the first call holds its prefill and its steps (timings themselves vary with the machine's load)
        assert 0 < p["first_call_prefill_seconds"] < p["first_call_seconds"] and p["decode_seconds_per_token"] > 0
        assert all(0 < x for x in p["prefill_seconds_all"])
        assert p["prefill_seconds"] == pytest.approx(sum(p["prefill_seconds_all"]) / 2)  # the median of two
    assert s["compiled"] is False and "did not compile" in s["note"]  # generate() compiles only on CUDA
    assert o["error"] == "the offloaded cache needs a CUDA device"


@pytest.mark.skipif(not TOKENIZER.exists(), reason="needs ../shared/testdata")
def test_gguf_runs_in_llamacpp(tmp_path):
    """The tiny GGUF through a CPU build of the carried llama.cpp (GGML_CUDA=OFF
    bench/llamacpp_build.sh): the vocabulary and every tensor are accepted, and batched-bench
    prints its jsonl rows as run_gpu.sh parses them."""
    root = BENCH.parent / "build-llamacpp"
    exe, gguf_py = root / "build-cpu/bin/llama-batched-bench", root / "llama.cpp/gguf-py"
    if not exe.exists():
        pytest.skip("no CPU build of llama.cpp (GGML_CUDA=OFF bench/llamacpp_build.sh)")
    pytest.importorskip("numpy")
    out = tmp_path / "tiny.gguf"
    r = subprocess.run([sys.executable, str(BENCH / "make_gguf.py"), "--shape", "tiny", "--tokenizer", str(TOKENIZER),
                        "-o", str(out)], capture_output=True, text=True, env={"PYTHONPATH": str(gguf_py)})
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe), "-m", str(out), "-npl", "1", "-npp", "48,48", "-ntg", "2", "-c", "128", "-fa", "on",
                        "--output-format", "jsonl"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.startswith('{"n_kv_max"')]
    assert [(x["pp"], x["tg"], x["n_kv"]) for x in rows] == [(48, 2, 50), (48, 2, 50)] and all(x["t_pp"] > 0 for x in rows)
    (l,) = report.llamacpp_rows("x", rows, "llama-batched-bench -npp 48,48", "")
    assert l["first_prefill_s"] == rows[0]["t_pp"] and l["prefill_s"] == rows[1]["t_pp"]


# --- bench/profile_decode.py: one decode step out of an ncu log ---------------------------------

def write_ncu_csv(path, kernels, shuffle=False):
    """An Nsight Compute --csv log as ncu writes it: ==PROF== lines, a header, one metric a kernel."""
    head = ["ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream", "Block Size",
            "Grid Size", "Device", "CC", "Section Name", "Metric Name", "Metric Unit", "Metric Value"]
    rows = [[str(i), "1", "headinfer", "h", name, "1", "7", "(256, 1, 1)", "(8, 1, 1)", "0", "9.0",
             "Command line profiler metrics", "gpu__time_duration.sum", "nsecond", f"{ns:,.0f}"]
            for i, (name, ns) in enumerate(kernels)]
    if shuffle:
        rows = rows[1::2] + rows[0::2]  # the reader orders by ID
    with open(path, "w", newline="") as f:
        f.write("==PROF== Connected to process 1 (/bin/headinfer)\n")
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(head)
        w.writerows(rows)
        f.write("==PROF== Disconnected from process 1\n")


def test_profile_decode_finds_the_step_and_splits_it(tmp_path):
    import profile_decode as pd
    setup = [("void fill_random_kernel<float>(float*, long)", 500000)] * 7
    layer = [("void gemv_kernel<__nv_bfloat16, true, 1>(const float*, long)", 20000),
             ("rope_kernel(float*, int)", 2000), ("copy_heads_kernel<float, __nv_bfloat16>(...)", 1500),
             ("void decode_attention_kernel<128, 4>(Params)", 10000), ("decode_combine_kernel<128>(...)", 3000),
             ("add_rms_norm_kernel(float*)", 3000), ("silu_mul_kernel(float*)", 2500)]
    step = layer * 32 + [("argmax_kernel(const float*)", 5000)]
    path = tmp_path / "hi.csv"
    write_ncu_csv(path, setup + step * 5, shuffle=True)
    r = pd.summarize(pd.read_ncu(str(path)))
    assert r["kernels_per_step"] == len(step)
    assert r["step_ms"] == pytest.approx(sum(ns for _, ns in step) / 1e6)
    cats = r["by_category_ms"]
    assert cats["gemv"] == pytest.approx(32 * 20000 / 1e6)
    assert cats["attention"] == pytest.approx(32 * 10000 / 1e6)
    assert cats["attention combine"] == pytest.approx(32 * 3000 / 1e6)
    assert cats["kv store"] == pytest.approx(32 * 1500 / 1e6)
    assert r["kernels_by_category"] == {"gemv": 32, "rope": 32, "kv store": 32, "attention": 32,
                                        "attention combine": 32, "norm": 32, "activation": 32,
                                        "logits / sampling": 1}
    assert "fill_random_kernel" not in " ".join(r["top_kernels_ms"])


def test_profile_decode_names_llamacpp_kernels():
    import profile_decode as pd
    assert pd.category("void mul_mat_vec_f<__half, float, 1, 256>") == "gemv"
    assert pd.category("void flash_attn_ext_vec<128, 1, (ggml_type)1>") == "attention"
    assert pd.category("void flash_attn_combine_results<128>") == "attention combine"
    assert pd.category("void rms_norm_f32<1024>") == "norm"
    assert pd.category("void rope_neox<true, float>") == "rope"
    assert pd.category("void rope_norm<1, 1, float, __half>") == "rope"  # RoPE, not a norm
    assert pd.category("void decode_kernel<__nv_bfloat16, 128, 4>(DecodeParams)") == "attention"
    assert pd.category("void gemv_gated_kernel<__nv_bfloat16, 0>(const float *)") == "gemv"
    assert pd.category("void k_set_rows<float, __half>") == "kv store"
    assert pd.category("void k_bin_bcast<&op_add, float, float, float>") == "add / mul"
    assert pd.category("void swiglu_kernel<float>") == "activation"
    assert pd.short("void f<int, (a)1>(float*, int)") == "void f<int, (a)1>"


def test_profile_decode_refuses_a_log_without_a_repeating_step(tmp_path):
    import profile_decode as pd
    path = tmp_path / "short.csv"
    write_ncu_csv(path, [("a_kernel(int)", 1.0), ("b_kernel(int)", 2.0)] * 2)  # two periods, not three
    with pytest.raises(ValueError, match="no repeating decode step"):
        pd.summarize(pd.read_ncu(str(path)))
    assert pd.main([f"x={path}"]) == 1


def test_decode_ab_report_means_changes_and_floor_shares(tmp_path):
    # bench/decode_ab.sh's runs.jsonl and floors.json, with this session's H100 figures (2026-12-07)
    import decode_ab_report as ab
    runs = [("base", 8192, 1, 7.003), ("candidate", 8192, 1, 6.744), ("base", 131072, 1, 13.414),
            ("candidate", 131072, 1, 13.043), ("base", 8192, 2, 6.982), ("candidate", 8192, 2, 6.706),
            ("base", 131072, 2, 13.348), ("candidate", 131072, 2, 13.070), ("candidate[X=0]", 8192, 1, None)]
    with open(tmp_path / "runs.jsonl", "w") as f:
        for label, ctx, rnd, v in runs:
            f.write(json.dumps({"label": label, "env": "-", "ctx": ctx, "round": rnd, "ms_per_token": v}) + "\n")
    (tmp_path / "floors.json").write_text(json.dumps({"floors": {"device_copy_gbps": 3006.84, "pinned_h2d_gbps": 55.5}}))
    out = tmp_path / "ab.json"
    assert ab.main([str(tmp_path), "85a6e46", "--json", str(out)]) == 0
    rows = {(r["label"], r["ctx"]): r for r in json.loads(out.read_text())["rows"]}
    c128, b128 = rows[("candidate", 131072)], rows[("base", 131072)]
    assert math.isclose(c128["mean_ms"], 13.0565) and math.isclose(b128["mean_ms"], 13.381)
    assert math.isclose(c128["vs_base"], 13.0565 / 13.381 - 1)
    w, kv = report.shape_bytes("llama3-8b")
    assert math.isclose(c128["floor_ms"], (w + kv * 131072) / 3006.84e9 * 1e3)
    assert 10.6 < c128["floor_ms"] < 10.8 and 0.81 < c128["share_of_floor"] < 0.83  # the note's 0.82
    b8 = rows[("base", 8192)]
    assert math.isclose(b8["weights_floor_ms"], w / 3006.84e9 * 1e3) and 4.9 < b8["weights_floor_ms"] < 5.1
    assert 0.70 < rows[("candidate", 8192)]["share_of_weights_floor"] < 0.75  # the note's 0.74
    failed = rows[("candidate[X=0]", 8192)]  # a run that wrote no JSON shows as missing, not as zero
    assert failed["mean_ms"] is None and failed["vs_base"] is None


def test_decode_ab_report_without_a_base_compares_with_the_candidate(tmp_path, capsys):
    # BASE=none: one build, its knobs against the candidate with none set (the first label run)
    import decode_ab_report as ab
    runs = [("candidate", 8192, 1, 6.30), ("candidate[K=512]", 8192, 1, 6.24), ("candidate", 8192, 2, 6.32),
            ("candidate[K=512]", 8192, 2, 6.26)]
    with open(tmp_path / "runs.jsonl", "w") as f:
        for label, ctx, rnd, v in runs:
            f.write(json.dumps({"label": label, "env": "-", "ctx": ctx, "round": rnd, "ms_per_token": v}) + "\n")
    out = tmp_path / "ab.json"
    assert ab.main([str(tmp_path), "none", "--json", str(out)]) == 0
    assert "no base build" in capsys.readouterr().out
    rows = {r["label"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["candidate"]["vs_base"] == 0.0
    assert math.isclose(rows["candidate[K=512]"]["vs_base"], 6.25 / 6.31 - 1)
    assert rows["candidate"]["share_of_floor"] is None  # no floors.json: no share, not a guess


def test_decode_ab_report_prefill_mode_tables_first_and_warm(tmp_path, capsys):
    # decode_ab.sh MODE=prefill: first and warm seconds per run; a failed run shows as missing
    import decode_ab_report as ab
    runs = [("base", 1, 0.256, 0.249), ("candidate", 1, 0.250, 0.240), ("base", 2, 0.258, 0.251),
            ("candidate", 2, 0.252, 0.242), ("candidate[K=1]", 1, None, None)]
    with open(tmp_path / "runs.jsonl", "w") as f:
        for label, rnd, first, warm in runs:
            f.write(json.dumps({"label": label, "env": "-", "ctx": 8192, "round": rnd, "prefill_first_s": first,
                                "prefill_warm_s": warm}) + "\n")
    out = tmp_path / "ab.json"
    assert ab.main([str(tmp_path), "374c6d6", "--json", str(out)]) == 0
    assert "Prefill A/B against base `374c6d6`" in capsys.readouterr().out
    rows = {r["label"]: r for r in json.loads(out.read_text())["rows"]}
    assert math.isclose(rows["candidate"]["warm_mean_s"], 0.241) and math.isclose(rows["base"]["first_mean_s"], 0.257)
    assert math.isclose(rows["candidate"]["warm_vs_base"], 0.241 / 0.250 - 1)
    assert rows["candidate[K=1]"]["warm_mean_s"] is None and rows["candidate[K=1]"]["warm_vs_base"] is None
