"""Every documented error path of the Python face: a clear exception before work starts, never
a crash; argument errors are ValueError/TypeError, the engine's own are HeadInferError with its
one-line message."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import model_dir

import headinfer
from headinfer import HeadInferError, HeadInferModel


@pytest.fixture(scope="module")
def stories():
    return HeadInferModel.from_pretrained(model_dir("stories260k"), device="cpu")


IDS = np.array([[1, 403, 407, 261, 378]])


def test_headinfer_error_is_runtime_and_value_error():
    assert issubclass(HeadInferError, RuntimeError) and issubclass(HeadInferError, ValueError)


@pytest.mark.parametrize("options, exc, match", [
    ({"gpu_memory": "24GiB"}, TypeError, "unknown option"),
    ({"gpu_mem": "24 potatoes"}, ValueError, "gpu_mem"),
    ({"gpu_mem": "0"}, ValueError, "gpu_mem"),
    ({"host_mem": "lots"}, ValueError, "host_mem"),
    ({"offload": "sometimes"}, ValueError, "offload"),
    ({"hybrid": "maybe"}, ValueError, "hybrid"),
    ({"device": "tpu"}, ValueError, "device"),
    ({"ctx": "12Q"}, ValueError, "ctx"),
    ({"chunk": 0}, ValueError, "chunk"),
    ({"kv_group": -1}, ValueError, "kv_group"),
    ({"chunk": "512"}, TypeError, "chunk"),
    ({"gpu_mem": 2.5}, TypeError, "gpu_mem"),
])
def test_bad_options(options, exc, match):
    with pytest.raises(exc, match=match):
        HeadInferModel.from_pretrained(model_dir("stories260k"), device=options.pop("device", "cpu"), **options)


def test_cuda_without_cuda_build():
    if headinfer.built_with_cuda():
        pytest.skip("this build has CUDA")
    with pytest.raises(ValueError, match="no CUDA backend"):
        HeadInferModel.from_pretrained(model_dir("stories260k"), device="cuda")


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"input_ids": np.array([[1, 2, 3], [4, 5, 6]])}, ValueError, "batch of 2"),
    ({"input_ids": np.array([1, 2, 3])}, ValueError, "2-D"),
    ({"input_ids": np.zeros((1, 0), dtype=np.int64)}, ValueError, "empty"),
    ({"input_ids": np.array([[1.0, 2.0]])}, ValueError, "integer"),
    ({"input_ids": np.array([[1, 512]])}, ValueError, "outside the vocabulary"),
    ({"input_ids": np.array([[1, -3]])}, ValueError, "outside the vocabulary"),
    ({"attention_mask": np.array([[0, 1, 1, 1, 1]])}, ValueError, "zeros"),
    ({"attention_mask": np.array([[1, 1, 1]])}, ValueError, "shape"),
    ({"max_length": 5}, ValueError, "Input length of input_ids is 5"),
    ({"max_length": 3}, ValueError, "max_length"),
    ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
    ({"max_new_tokens": -2}, ValueError, "max_new_tokens"),
    ({"do_sample": True, "temperature": 0.0}, ValueError, "temperature"),
    ({"do_sample": True, "top_p": 1.5}, ValueError, "top_p"),
    ({"do_sample": True, "top_k": -1}, ValueError, "top_k"),
    ({"eos_token_id": 100000}, ValueError, "eos_token_id"),
    ({"num_beams": 4}, ValueError, "num_beams"),
    ({"repetition_penalty": 1.2}, ValueError, "not supported"),
    ({"input_ids": None}, ValueError, "input_ids"),
])
def test_bad_generate_arguments(stories, kwargs, exc, match):
    args = {"input_ids": IDS, "max_new_tokens": 4, **kwargs}
    if "max_length" in kwargs:
        args.pop("max_new_tokens")
    with pytest.raises(exc, match=match):
        stories.generate(**args)
    assert stories.generate(IDS, max_new_tokens=2).shape == (1, 7)  # still usable


def test_accepted_inert_arguments(stories):
    a = stories.generate(IDS, attention_mask=np.ones_like(IDS), max_new_tokens=3, pad_token_id=0, use_cache=True,
                         num_beams=1, num_return_sequences=1)
    assert a.tolist() == stories.generate(IDS, max_new_tokens=3).tolist()


def test_prompt_longer_than_ctx():
    hm = HeadInferModel.from_pretrained(model_dir("stories260k"), device="cpu", ctx=4)
    with pytest.raises(ValueError, match="longer than the context"):
        hm.generate(IDS, max_new_tokens=2)


def test_ctx_option_stops_at_the_context():
    hm = HeadInferModel.from_pretrained(model_dir("stories260k"), device="cpu", ctx=8)
    out = hm.generate(IDS, max_new_tokens=10, eos_token_id=[])
    assert out.shape == (1, 9) and hm.stats["stopped_at_context"]  # 8 positions: the 9th token is never fed


def test_gpu_mem_too_small_is_the_planners_message():
    hm = HeadInferModel.from_pretrained(model_dir("stories260k"), device="cpu", gpu_mem="64KiB")
    with pytest.raises(HeadInferError, match="gpu-mem|weights"):
        hm.generate(IDS, max_new_tokens=2)


def test_missing_folder():
    with pytest.raises(HeadInferError, match="not a directory"):
        HeadInferModel.from_pretrained("/nonexistent/model", device="cpu")


def unsupported_folder(tmp_path):
    src = model_dir("stories260k")
    for f in os.listdir(src):
        shutil.copy(src / f, tmp_path / f)
    config = json.loads((src / "config.json").read_text())
    config["model_type"] = "gpt_bigcode"
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_unsupported_architecture_same_message_as_the_folder(tmp_path, torch, transformers):
    from conftest import hf_model

    folder = unsupported_folder(tmp_path)
    with pytest.raises(HeadInferError, match="gpt_bigcode") as from_folder:
        HeadInferModel.from_pretrained(folder, device="cpu")
    model = hf_model(transformers, torch, "stories260k")

    class Renamed:  # the same model, its config claiming another architecture
        config = type("C", (), {"to_dict": lambda self: {**model.config.to_dict(), "model_type": "gpt_bigcode"}})()
        generation_config = None
        state_dict = staticmethod(model.state_dict)

    with pytest.raises(HeadInferError, match="gpt_bigcode") as from_model:
        HeadInferModel(Renamed(), device="cpu")
    # The same reason after the origin ("<folder>/config.json: " or "Renamed.state_dict() config: ").
    reason = lambda e: str(e.value).split(": ", 1)[1]  # noqa: E731
    assert reason(from_folder) == reason(from_model)


def test_missing_tensor_names_it(torch, transformers):
    from conftest import hf_model

    model = hf_model(transformers, torch, "llama3-f32")

    class Partial:
        config = model.config
        generation_config = model.generation_config

        @staticmethod
        def state_dict():
            return {k: v for k, v in model.state_dict().items() if "layers.1.mlp.up_proj" not in k}

    with pytest.raises(HeadInferError, match="model.layers.1.mlp.up_proj.weight"):
        HeadInferModel(Partial(), device="cpu").generate(np.array([[1, 2, 3]]), max_new_tokens=1)


def test_non_contiguous_and_unaligned_tensors_are_copied(torch, transformers):
    from conftest import hf_model

    model = hf_model(transformers, torch, "llama3-f32")
    sd = model.state_dict()

    class Odd:
        config = model.config
        generation_config = model.generation_config

        @staticmethod
        def state_dict():
            out = dict(sd)
            w = sd["model.layers.0.self_attn.q_proj.weight"]
            out["model.layers.0.self_attn.q_proj.weight"] = w.t().contiguous().t()  # transposed strides
            big = torch.cat([torch.zeros(1), sd["model.norm.weight"]])
            out["model.norm.weight"] = big[1:]  # 4 bytes into its storage
            return out

    ids = np.array([[5, 6, 7, 8]])
    a = HeadInferModel(Odd(), device="cpu").generate(ids, max_new_tokens=5, eos_token_id=[])
    b = HeadInferModel(model, device="cpu").generate(ids, max_new_tokens=5, eos_token_id=[])
    assert a.tolist() == b.tolist()


def test_call_is_not_a_forward(stories):
    with pytest.raises(TypeError, match="generate"):
        stories(IDS)
