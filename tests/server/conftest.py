"""Fixtures for the `headinfer serve` tests: the binary (HEADINFER_BIN, else build-cpu's), the
shared test data (HEADINFER_TESTDATA, else ../shared/testdata beside the checkout) and a server
started on a free loopback port."""
import os
import pathlib
import re
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def headinfer_bin():
    path = pathlib.Path(os.environ.get("HEADINFER_BIN", ROOT / "build-cpu" / "src" / "cli" / "headinfer"))
    if not path.exists():
        pytest.fail(f"headinfer binary not found at {path} (set HEADINFER_BIN)")
    return path


def testdata():
    path = pathlib.Path(os.environ.get("HEADINFER_TESTDATA", ROOT.parent / "shared" / "testdata"))
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path}")
    return path


class Served:
    """A running `headinfer serve` process and where it listens."""

    def __init__(self, args, kv_dir):
        self.kv_dir = kv_dir
        cmd = [str(headinfer_bin()), "serve", "--port", "0", "--device", "cpu", "-t", "2",
               "--kv-dir", str(kv_dir)] + args
        self.stderr_path = kv_dir / f"serve-{id(self)}.stderr"
        self.stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (http://[\d.]+:\d+) \(model '([^']+)'", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"serve did not start: {line!r} {self.stderr_path.read_text()}")
        self.url, self.model = m.group(1), m.group(2)

    def rss_kib(self):
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self):
        """Stops the server with SIGTERM; it must have been running and must end cleanly (exit 0,
        no sanitizer report)."""
        alive = self.proc.poll() is None
        self.proc.terminate()
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.stderr.close()
        log = self.stderr_path.read_text()
        assert "Sanitizer" not in log and "runtime error" not in log, log[-4000:]
        assert rc == 0, f"serve exited {rc}: {log[-2000:]}"
        return alive


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    model = testdata() / "models" / "stories260k"
    s = Served(["-m", str(model), "--ctx", "512", "--queue", "4", "--chunk", "16"], tmp_path_factory.mktemp("kv"))
    s.model_dir = model
    yield s
    assert s.stop(), "the server died during the tests"


@pytest.fixture
def start_server(tmp_path):
    started = []

    def start(model_dir, *args):
        s = Served(["-m", str(model_dir)] + list(args), tmp_path)
        s.model_dir = model_dir
        started.append(s)
        return s

    yield start
    for s in started:
        assert s.stop(), "the server died during the test"
