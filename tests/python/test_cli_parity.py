"""The Python face and the CLI run one engine: the same prompt gives the same tokens."""
import json
import subprocess

import numpy as np

from conftest import cli, model_dir, prompts

from headinfer import HeadInferModel


def test_generate_equals_the_cli(tmp_path):
    folder = model_dir("stories260k")
    ids, n = prompts("stories260k")[1]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(",".join(map(str, ids)) + "\n")  # --prompt-ids @FILE (long prompts)
    r = subprocess.run([str(cli()), "generate", "-m", str(folder), "--prompt-ids", f"@{ids_file}", "-n", str(n),
                        "--device", "cpu", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    theirs = json.loads(r.stdout.strip().splitlines()[-1])
    hm = HeadInferModel.from_pretrained(folder, device="cpu")
    ours = hm.generate(np.array([ids]), max_new_tokens=n)
    assert ours[0, len(ids):].tolist() == theirs["tokens"]
    assert hm.stats["weight_bytes"] > 0 and hm.stats["weights_in_place_bytes"] == 0  # the folder is uploaded
