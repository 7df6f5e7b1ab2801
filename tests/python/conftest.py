"""Shared pieces of the Python package tests: where the test data is, the shared models, and
transformers runs cached per model (loading and generating is the slow part)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TESTDATA = Path(os.environ.get("HEADINFER_TESTDATA", REPO.parent / "shared" / "testdata"))
TINY = TESTDATA / "models" / "tiny"
STORIES = TESTDATA / "models" / "stories260k"
ARCHS = ["llama2", "llama3", "mistral", "mistral_swa", "qwen2", "qwen2_yarn", "qwen3"]
TINY_DIRS = [f"{a}-{d}" for a in ARCHS for d in ("f32", "bf16")]

# Logit tolerance, as tests/foundation/model_test.cpp derives it: the forward and torch's differ
# only in summation order and the last bit of exp/cos/sin; fp32 reductions of up to 1500 terms
# carry ~sqrt(K) u (u = 2^-24) relative error, compounded over three layers: 1e-5 * max|logit|.
LOGIT_RTOL = 1e-5


def cli() -> Path:
    """The headinfer binary of the build this package was imported from (build/python/headinfer)."""
    import headinfer

    path = Path(headinfer.__file__).resolve().parents[2] / "src" / "cli" / "headinfer"
    if not path.exists():
        pytest.skip(f"the CLI is not built beside this package ({path})")
    return path


def require_testdata():
    if not TESTDATA.is_dir():
        pytest.skip(f"shared test data not found at {TESTDATA}")


def model_dir(name: str) -> Path:
    require_testdata()
    return STORIES if name == "stories260k" else TINY / name


def prompts(name: str):
    """(prompt ids, new tokens) cases: the shared references' prompts (7 and 61 ids; stories260k's
    own prompts) and awkward lengths of new tokens."""
    if name == "stories260k":
        ref = json.loads((STORIES / "reference.json").read_text())
        return [(c["prompt_ids"], 23) for c in ref[:2]]
    ref = json.loads((TINY / name.replace("-bf16", "-f32") / "ref.json").read_text())
    return [(c["prompt_ids"], n) for c, n in zip(ref["cases"][:2], (17, 9))]


@pytest.fixture(scope="session")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def transformers(torch):
    tf = pytest.importorskip("transformers")
    torch.backends.cuda.matmul.allow_tf32 = False
    return tf


_HF_CACHE = {}


def hf_model(transformers, torch, name: str, dtype=None):
    """transformers' model for a shared checkpoint, fp32 unless `dtype` (bf16 files are widened to
    fp32 exactly, so the f32 comparison covers them too), eval mode, cached."""
    key = (name, str(dtype))
    if key not in _HF_CACHE:
        m = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir(name)), dtype=dtype or torch.float32)
        _HF_CACHE[key] = m.eval()
    return _HF_CACHE[key]


def hf_generate(transformers, torch, name: str, ids, n: int):
    """transformers' own greedy run: (ids [1, prompt + new], logits [new, vocab])."""
    m = hf_model(transformers, torch, name)
    x = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        out = m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                         output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.cat([l.float() for l in out.logits]).numpy()


def assert_logits_close(ours: np.ndarray, ref: np.ndarray, where: str):
    assert ours.shape == ref.shape, where
    for i in range(ref.shape[0]):
        tol = LOGIT_RTOL * float(np.abs(ref[i]).max())
        err = float(np.abs(ours[i] - ref[i]).max())
        assert err <= tol, f"{where}: step {i} logits differ by {err:.3g} > {tol:.3g}"
