"""from_pretrained works with only numpy: torch and transformers made unimportable."""
import subprocess
import sys
from pathlib import Path

import headinfer
from conftest import model_dir, prompts

SCRIPT = r"""
import sys, json
import numpy as np
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from headinfer import HeadInferModel
hm = HeadInferModel.from_pretrained(sys.argv[1], device="cpu")
ids = json.loads(sys.argv[2])
out = hm.generate(np.array([ids]), max_new_tokens=int(sys.argv[3]))
assert isinstance(out, np.ndarray), type(out)
d = hm.generate(np.array([ids]), max_new_tokens=3, do_sample=True, output_logits=True, return_dict_in_generate=True)
assert type(d).__name__ == "GenerateOutput" and d.logits[0].shape == (1, hm.vocab_size)
assert "torch" not in sys.modules and "transformers" not in sys.modules
print(json.dumps(out.tolist()))
"""


def test_from_pretrained_without_torch():
    import json

    ids, n = prompts("stories260k")[0]
    env_path = str(Path(headinfer.__file__).resolve().parents[1])
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(model_dir("stories260k")), json.dumps(ids), str(n)],
                       capture_output=True, text=True, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    ref = headinfer.HeadInferModel.from_pretrained(model_dir("stories260k"), device="cpu")
    assert json.loads(r.stdout) == ref.generate([ids], max_new_tokens=n).tolist()
