"""plan(): the planner's dict, the same numbers as `headinfer plan --json`."""
import json
import subprocess

import pytest

from conftest import cli, model_dir

import headinfer
from headinfer import HeadInferModel

# Measured and cached bandwidths say where they came from ("measured", "cached in ..."): the
# first call measures, the next reads the cache, so those labels may differ; numbers may not.
SOURCE_KEYS = {"link_gbps_source", "dram_gbps_source"}


def cli_plan(*args):
    r = subprocess.run([str(cli()), "plan", "--json", *args], capture_output=True, text=True)
    return json.loads(r.stdout)


@pytest.mark.parametrize("ctx, options, flags", [
    (4096, {"gpu_mem": "1GiB", "host_mem": "8GiB"}, ["--gpu-mem", "1GiB", "--host-mem", "8GiB", "--hybrid", "off"]),
    ("128K", {"gpu_mem": "40MiB", "host_mem": "8GiB", "offload": "auto", "kv_group": 1, "chunk": 64},
     ["--gpu-mem", "40MiB", "--host-mem", "8GiB", "--kv-group", "1", "--chunk", "64", "--hybrid", "off"]),
    ("1M", {"gpu_mem": "24MiB", "host_mem": "64GiB", "offload": "all"},
     ["--gpu-mem", "24MiB", "--host-mem", "64GiB", "--offload", "all", "--hybrid", "off"]),
])
def test_plan_equals_the_cli(ctx, options, flags):
    folder = model_dir("llama3-bf16")
    ours = headinfer.plan(folder, ctx, device="cpu", **{"hybrid": "off", **options})
    theirs = cli_plan("-m", str(folder), "--ctx", str(ctx), "--device", "cpu", *flags)
    for k in SOURCE_KEYS:
        ours.pop(k), theirs.pop(k)
    assert ours == theirs


def test_plan_of_a_config_that_does_not_fit():
    config = json.loads((model_dir("llama3-f32") / "config.json").read_text())
    p = headinfer.plan(config, "1M", device="cpu", gpu_mem="64KiB", host_mem="1MiB")
    assert p["fits"] is False and "gpu-mem" in p["message"]


def test_model_plan_matches_the_folder_plan():
    folder = model_dir("qwen2-f32")
    hm = HeadInferModel.from_pretrained(folder, device="cpu", gpu_mem="40MiB", kv_group=1)
    a = hm.plan("64K")
    b = headinfer.plan(folder, 65536, device="cpu", gpu_mem="40MiB", kv_group=1)
    for k in SOURCE_KEYS | {"host_mem"}:
        a.pop(k, None), b.pop(k)
    assert a == b and a["fits"] and a["n_streamed_groups"] > 0


def test_plan_of_a_transformers_model_counts_its_weights(torch, transformers):
    from conftest import hf_model

    model = hf_model(transformers, torch, "llama3-bf16", dtype=torch.bfloat16)
    p = headinfer.plan(model, 8192, device="cpu", gpu_mem="1GiB")
    q = HeadInferModel(model, device="cpu", gpu_mem="1GiB").plan(8192)
    assert p["weight_elem_bytes"] == q["weight_elem_bytes"] == 2
    assert p["weight_bytes"] == q["weight_bytes"] > 0
