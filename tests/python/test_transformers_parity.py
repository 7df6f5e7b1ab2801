"""HeadInferModel(transformers model).generate against transformers' own generate, on every
shared tiny checkpoint and stories260k: greedy ids token for token, logits within the CPU
tolerance the C++ tests derive; from_pretrained and offloaded placements give the same."""
import signal

import numpy as np
import pytest

from conftest import TINY_DIRS, assert_logits_close, hf_generate, hf_model, model_dir, prompts

import headinfer
from headinfer import HeadInferModel

MODELS = TINY_DIRS + ["stories260k"]


@pytest.mark.parametrize("name", MODELS)
def test_greedy_ids_and_logits_match_transformers(name, torch, transformers):
    hm = HeadInferModel(hf_model(transformers, torch, name), device="cpu")
    for ids, n in prompts(name):
        ref_seq, ref_logits = hf_generate(transformers, torch, name, ids, n)
        x = torch.tensor([ids], dtype=torch.long)
        out = hm.generate(x, max_new_tokens=n, do_sample=False)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.long
        assert out.tolist() == ref_seq.tolist(), f"{name}, prompt of {len(ids)}"
        d = hm.generate(x, max_new_tokens=n, do_sample=False, output_logits=True, return_dict_in_generate=True)
        assert d.sequences.tolist() == ref_seq.tolist()
        assert all(tuple(l.shape) == (1, hm.vocab_size) and l.dtype == torch.float32 for l in d.logits)
        assert_logits_close(torch.cat(d.logits).numpy(), ref_logits, f"{name}, prompt of {len(ids)}")
    # The CPU device reads the model's own CPU tensors: nothing copied.
    assert hm.stats["weights_in_place_bytes"] == hm.stats["weight_bytes"] > 0


@pytest.mark.parametrize("name", MODELS)
def test_from_pretrained_gives_the_same_ids(name, torch, transformers):
    hm = HeadInferModel.from_pretrained(model_dir(name), device="cpu")
    for ids, n in prompts(name):
        ref_seq, _ = hf_generate(transformers, torch, name, ids, n)
        out = hm.generate(np.array([ids]), max_new_tokens=n, do_sample=False)
        assert isinstance(out, np.ndarray) and out.dtype == np.int64
        assert out.tolist() == ref_seq.tolist(), f"{name}, prompt of {len(ids)}"


@pytest.mark.parametrize("name", ["llama3-bf16", "qwen2-bf16", "qwen3-bf16"])
def test_bf16_tensors_in_place_equal_the_bf16_folder(name, torch, transformers):
    # bf16 torch tensors reach the engine through DLPack (numpy has no bf16) and are read in place:
    # the same weights as the bf16 safetensors, so bit-identical logits.
    hm = HeadInferModel(hf_model(transformers, torch, name, dtype=torch.bfloat16), device="cpu")
    folder = HeadInferModel.from_pretrained(model_dir(name), device="cpu")
    ids, n = prompts(name)[1]
    a = hm.generate(torch.tensor([ids]), max_new_tokens=n, output_logits=True, return_dict_in_generate=True)
    b = folder.generate(np.array([ids]), max_new_tokens=n, output_logits=True, return_dict_in_generate=True)
    assert a.sequences.tolist() == b.sequences.tolist()
    assert np.array_equal(torch.cat(a.logits).numpy(), np.concatenate(b.logits))
    assert hm.stats["weights_in_place_bytes"] == hm.stats["weight_bytes"]


@pytest.mark.parametrize("name", ["llama3-f32", "mistral_swa-f32", "qwen2-f32", "stories260k"])
def test_offloaded_placements_are_bit_identical(name, torch, transformers):
    model = hf_model(transformers, torch, name)
    ids, n = prompts(name)[1]
    x = torch.tensor([ids])

    def run(**options):
        hm = HeadInferModel(model, device="cpu", **options)
        out = hm.generate(x, max_new_tokens=n, output_logits=True, return_dict_in_generate=True)
        return hm, out.sequences.tolist(), torch.cat(out.logits).numpy()

    _, ref_ids, ref_logits = run(offload="none")
    for options in ({"offload": "all", "kv_group": 1, "chunk": 7}, {"offload": "all", "chunk": 13},
                    {"offload": "auto", "gpu_mem": "4MiB", "chunk": 5}):
        hm, got_ids, got_logits = run(**options)
        assert got_ids == ref_ids, options
        assert np.array_equal(got_logits, ref_logits), options
        if options["offload"] == "all":
            assert hm.placement()["n_resident_groups"] == 0


def test_max_length_counts_the_prompt(torch, transformers):
    hm = HeadInferModel(hf_model(transformers, torch, "stories260k"), device="cpu")
    model = hf_model(transformers, torch, "stories260k")
    ids, _ = prompts("stories260k")[1]
    x = torch.tensor([ids])
    for kwargs in ({"max_length": len(ids) + 11}, {"max_length": 3, "max_new_tokens": 6}, {}):
        with torch.no_grad():
            ref = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, **kwargs)
        assert hm.generate(x, do_sample=False, **kwargs).tolist() == ref.tolist(), kwargs


def test_eos_from_the_generation_config_and_given(torch, transformers):
    model = hf_model(transformers, torch, "stories260k")
    hm = HeadInferModel(model, device="cpu")
    ids, _ = prompts("stories260k")[0]
    x = torch.tensor([ids])
    full = hm.generate(x, max_new_tokens=40, eos_token_id=[]).tolist()[0]  # [] : no stop id
    stop = full[len(ids) + 4]
    for eos in (stop, [999999 % hm.vocab_size, stop]):
        with torch.no_grad():
            ref = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=40, do_sample=False,
                                 eos_token_id=eos)
        got = hm.generate(x, max_new_tokens=40, eos_token_id=eos)
        assert got.tolist() == ref.tolist()
        assert got.shape[1] <= len(ids) + 5


def test_seeded_sampling_is_reproducible(torch, transformers):
    hm = HeadInferModel(hf_model(transformers, torch, "stories260k"), device="cpu")
    x = torch.tensor([prompts("stories260k")[0][0]])
    kw = dict(do_sample=True, temperature=0.9, top_k=40, top_p=0.95, max_new_tokens=30)
    a = hm.generate(x, seed=1234, **kw)
    assert hm.generate(x, seed=1234, **kw).tolist() == a.tolist()
    torch.manual_seed(7)
    b = hm.generate(x, **kw)
    torch.manual_seed(7)
    assert hm.generate(x, **kw).tolist() == b.tolist()
    # The draws depend on the seed: 30 tokens from a trained model's spread-out distribution.
    assert len({tuple(hm.generate(x, seed=s, **kw).tolist()[0]) for s in range(4)}) > 1


class RecordingStreamer:
    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(("put", type(value).__name__, value.tolist()))

    def end(self):
        self.calls.append(("end",))


def test_streamer_protocol_as_transformers(torch, transformers):
    model = hf_model(transformers, torch, "stories260k")
    hm = HeadInferModel(model, device="cpu")
    x = torch.tensor([prompts("stories260k")[1][0]])
    ours, theirs = RecordingStreamer(), RecordingStreamer()
    hm.generate(x, max_new_tokens=8, streamer=ours)
    with torch.no_grad():
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False, streamer=theirs)
    assert ours.calls == theirs.calls


def test_text_streamer_prints_the_decoded_text(torch, transformers, capsys):
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir("stories260k")))
    hm = HeadInferModel(hf_model(transformers, torch, "stories260k"), device="cpu")
    x = tok("Once upon a time", return_tensors="pt").input_ids
    out = hm.generate(x, max_new_tokens=20, streamer=transformers.TextStreamer(tok, skip_prompt=True))
    printed = capsys.readouterr().out
    assert printed.strip() == tok.decode(out[0, x.shape[1]:], skip_special_tokens=True).strip()


def test_ctrl_c_stops_cleanly_and_the_model_still_works(torch, transformers):
    import _thread

    hm = HeadInferModel(hf_model(transformers, torch, "stories260k"), device="cpu")
    x = torch.tensor([prompts("stories260k")[1][0]])
    ref = hm.generate(x, max_new_tokens=20, eos_token_id=[])

    class InterruptAfter3(RecordingStreamer):
        def put(self, value):
            super().put(value)
            if len(self.calls) == 4:  # the prompt, then 3 tokens: as if Ctrl-C were pressed
                _thread.interrupt_main()

    s = InterruptAfter3()
    # interrupt_main() does nothing unless Python's own SIGINT handler is installed.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            hm.generate(x, max_new_tokens=200, eos_token_id=[], streamer=s)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(s.calls) == 4  # stopped at the next token, not after 200
    assert hm.generate(x, max_new_tokens=20, eos_token_id=[]).tolist() == ref.tolist()


def test_streamer_error_propagates_and_the_model_still_works(torch, transformers):
    hm = HeadInferModel(hf_model(transformers, torch, "stories260k"), device="cpu")
    x = torch.tensor([prompts("stories260k")[0][0]])
    ref = hm.generate(x, max_new_tokens=5)

    class Broken:
        def put(self, value):
            if value.ndim == 1:
                raise OSError("pipe closed")

        def end(self):
            pass

    with pytest.raises(OSError, match="pipe closed"):
        hm.generate(x, max_new_tokens=5, streamer=Broken())
    assert hm.generate(x, max_new_tokens=5).tolist() == ref.tolist()


def test_issue_snippet_on_a_local_folder(torch, transformers):
    # The README's Python section, as written (bf16 weights, the CPU device here).
    path = str(model_dir("stories260k"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    headinfer_model = HeadInferModel(model, device="cpu")
    input_ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    output = headinfer_model.generate(input_ids, max_length=60)
    text = tokenizer.decode(output[0], skip_special_tokens=True)
    assert text.startswith("Once upon a time") and output.shape[1] <= 60
    assert isinstance(headinfer.HeadInferError("x"), RuntimeError)


def test_long_prefill_shows_progress_and_matches_the_short_chunks(capsys):
    pytest.importorskip("tqdm")
    folder = model_dir("llama3-f32")
    ids = np.random.default_rng(5).integers(0, 320, (1, 4200))
    hm = HeadInferModel.from_pretrained(folder, device="cpu")
    a = hm.generate(ids, max_new_tokens=3, output_logits=True, return_dict_in_generate=True)
    err = capsys.readouterr().err
    assert "prefill" in err and "4200/4200" in err
    b = HeadInferModel.from_pretrained(folder, device="cpu", chunk=97).generate(
        ids, max_new_tokens=3, output_logits=True, return_dict_in_generate=True)
    assert a.sequences.tolist() == b.sequences.tolist()
    assert np.array_equal(np.concatenate(a.logits), np.concatenate(b.logits))


def test_context_beyond_the_positions_warns_as_the_cli():
    hm = HeadInferModel.from_pretrained(model_dir("stories260k"), device="cpu", ctx=3000)  # 2048 positions
    with pytest.warns(UserWarning, match="max_position_embeddings"):
        hm.generate(np.array([[1, 403]]), max_new_tokens=2)
