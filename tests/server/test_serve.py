"""`headinfer serve` with the openai client as the real client (issue 13): completions and chat,
streamed and not, equal to `headinfer generate`; a five-turn conversation that prefills only its
new tokens; KV snapshots; OpenAI error objects for bad input; the queue's 429; cancellation by
disconnecting. Run: python -m pytest tests/server (HEADINFER_BIN, HEADINFER_TESTDATA optional)."""
import http.client
import json
import random
import re
import socket
import subprocess
import threading
import time
import urllib.parse

import openai
import pytest

from conftest import headinfer_bin

PROMPT = "Once upon a time, there was a little girl named Lily."


def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def raw(served, method, path, body=None, headers=None):
    """(status, parsed JSON or text) of one plain HTTP request."""
    u = urllib.parse.urlparse(served.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
    r = conn.getresponse()
    text = r.read().decode()
    conn.close()
    try:
        return r.status, json.loads(text)
    except ValueError:
        return r.status, text


def metrics(served):
    status, text = raw(served, "GET", "/metrics")
    assert status == 200
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def generate_cli(model_dir, *args):
    r = subprocess.run([str(headinfer_bin()), "generate", "-m", str(model_dir), "--device", "cpu", "-t", "2", *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout[:-1]  # generate ends its output with a newline


def assert_error(status, body, want_status, param=None, code=None):
    assert status == want_status, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code


def test_models_health_metrics(stories):
    models = client(stories).models.list()
    assert [m.id for m in models.data] == [stories.model]
    assert raw(stories, "GET", "/health") == (200, {"status": "ok"})
    m = metrics(stories)
    for name in ["headinfer_prompt_tokens_total", "headinfer_generated_tokens_total", "headinfer_prefill_seconds_total",
                 "headinfer_decode_seconds_total", "headinfer_queue_length", 'headinfer_kv_bytes{tier="device"}',
                 'headinfer_kv_bytes{tier="host"}']:
        assert name in m


def test_completion_greedy_equals_generate(stories):
    want = generate_cli(stories.model_dir, "-p", PROMPT, "-n", "24")
    c = client(stories)
    r = c.completions.create(model=stories.model, prompt=PROMPT, max_tokens=24, temperature=0)
    assert r.choices[0].text == want
    assert r.usage.completion_tokens <= 24 and r.usage.prompt_tokens > 5
    pieces, usage = [], None
    for ch in c.completions.create(model=stories.model, prompt=PROMPT, max_tokens=24, temperature=0, stream=True,
                                   stream_options={"include_usage": True}):
        if ch.choices:
            pieces.append(ch.choices[0].text)
        if ch.usage:
            usage = ch.usage
    assert "".join(pieces) == want
    assert usage.completion_tokens == r.usage.completion_tokens
    # The same prompt again: all but its last token come from the kept KV.
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1


def test_completion_from_token_ids_equals_generate(stories):
    ids = [1, 403, 407, 261, 378, 29, 292, 269, 395, 2]
    want = generate_cli(stories.model_dir, "--prompt-ids", ",".join(map(str, ids)), "-n", "12")
    r = client(stories).completions.create(model=stories.model, prompt=ids, max_tokens=12, temperature=0)
    assert r.choices[0].text == want


def test_chat_equals_generate_chat(stories):
    want = generate_cli(stories.model_dir, "--chat", "-p", "Tell me a story.", "-n", "20")
    c = client(stories)
    msgs = [{"role": "user", "content": "Tell me a story."}]
    r = c.chat.completions.create(model=stories.model, messages=msgs, max_tokens=20, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want
    stream = c.chat.completions.create(model=stories.model, messages=msgs, max_tokens=20, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == want
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stop_strings_and_sampling(stories):
    c = client(stories)
    full = c.completions.create(model=stories.model, prompt=PROMPT, max_tokens=30, temperature=0).choices[0].text
    words = full.split()
    assert len(words) > 3
    stop = " " + words[2]
    r = c.completions.create(model=stories.model, prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop])
    assert r.choices[0].text == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    a = c.completions.create(model=stories.model, prompt=PROMPT, max_tokens=16, temperature=0.9, top_p=0.9, seed=5,
                             extra_body={"top_k": 40})
    b = c.completions.create(model=stories.model, prompt=PROMPT, max_tokens=16, temperature=0.9, top_p=0.9, seed=5,
                             extra_body={"top_k": 40})
    assert a.choices[0].text == b.choices[0].text  # the seed fixes the draw


def test_five_turn_conversation_prefills_only_new_tokens(stories):
    c = client(stories)
    rng = random.Random(3)
    before = metrics(stories)
    ids = [1] + [rng.randrange(3, 512) for _ in range(40)]
    c.completions.create(model=stories.model, prompt=[2, 3], max_tokens=1, temperature=0)  # diverges at position 0
    prefilled = 0
    for turn in range(5):
        r = c.completions.create(model=stories.model, prompt=ids, max_tokens=1, temperature=0)
        # max_tokens 1 feeds nothing back: the kept KV is exactly the previous prompt.
        want_cached = 0 if turn == 0 else previous
        assert r.usage.prompt_tokens_details.cached_tokens == want_cached
        prefilled += len(ids) - want_cached
        previous = len(ids)
        ids = ids + [rng.randrange(3, 512) for _ in range(17 + turn)]
    after = metrics(stories)
    assert after["headinfer_prefilled_tokens_total"] - before["headinfer_prefilled_tokens_total"] == prefilled + 2
    # Chat turns: the system message and earlier turns are kept across requests.
    msgs = [{"role": "system", "content": "You tell short stories."}]
    last_prompt = 0
    for q in ["Who is Lily?", "What does she like?", "Where does she live?", "Who is her friend?", "The end?"]:
        msgs.append({"role": "user", "content": q})
        r = c.chat.completions.create(model=stories.model, messages=msgs, max_tokens=8, temperature=0)
        if last_prompt:
            assert r.usage.prompt_tokens_details.cached_tokens >= last_prompt - 1
        last_prompt = r.usage.prompt_tokens
        msgs.append({"role": "assistant", "content": r.choices[0].message.content})


def test_reused_answer_equals_fresh_answer(stories):
    c = client(stories)
    ids = [1] + list(range(40, 140))
    c.completions.create(model=stories.model, prompt=ids[:60], max_tokens=5, temperature=0)
    reused = c.completions.create(model=stories.model, prompt=ids, max_tokens=20, temperature=0)
    assert reused.usage.prompt_tokens_details.cached_tokens == 60
    c.completions.create(model=stories.model, prompt=[2, 3], max_tokens=1, temperature=0)
    fresh = c.completions.create(model=stories.model, prompt=ids, max_tokens=20, temperature=0)
    assert fresh.usage.prompt_tokens_details.cached_tokens == 0
    assert reused.choices[0].text == fresh.choices[0].text


def test_kv_snapshot_save_load(stories):
    c = client(stories)
    ids = [1] + list(range(200, 300))
    first = c.completions.create(model=stories.model, prompt=ids, max_tokens=1, temperature=0)
    status, saved = raw(stories, "POST", "/v1/kv/save", {"name": "doc-1"})
    assert status == 200 and saved["positions"] == len(ids) and saved["bytes"] > 0
    c.completions.create(model=stories.model, prompt=[2, 3], max_tokens=1, temperature=0)
    status, loaded = raw(stories, "POST", "/v1/kv/load", {"name": "doc-1"})
    assert status == 200 and loaded["positions"] == len(ids)
    r = c.completions.create(model=stories.model, prompt=ids + [5, 6], max_tokens=10, temperature=0)
    assert r.usage.prompt_tokens_details.cached_tokens == len(ids)
    c.completions.create(model=stories.model, prompt=[2, 3], max_tokens=1, temperature=0)
    fresh = c.completions.create(model=stories.model, prompt=ids + [5, 6], max_tokens=10, temperature=0)
    assert r.choices[0].text == fresh.choices[0].text
    assert first.choices[0].text
    assert_error(*raw(stories, "POST", "/v1/kv/load", {"name": "missing"}), 404, param="name")
    assert_error(*raw(stories, "POST", "/v1/kv/save", {"name": "../evil"}), 400, param="name")
    path = stories.kv_dir / "doc-1.hikv"
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF
    (stories.kv_dir / "bad.hikv").write_bytes(bytes(data))
    status, body = raw(stories, "POST", "/v1/kv/load", {"name": "bad"})
    assert_error(status, body, 400, code="invalid_snapshot")
    assert "checksum" in body["error"]["message"]
    (stories.kv_dir / "short.hikv").write_bytes(path.read_bytes()[:-10])
    status, body = raw(stories, "POST", "/v1/kv/load", {"name": "short"})
    assert_error(status, body, 400)
    assert "truncated" in body["error"]["message"]


def test_bad_input_gets_openai_errors(stories):
    c = client(stories)
    assert_error(*raw(stories, "POST", "/v1/completions", b"{not json"), 400)
    assert_error(*raw(stories, "POST", "/v1/completions", {"model": stories.model, "prompt": 5}), 400, param="prompt")
    assert_error(*raw(stories, "POST", "/v1/completions", {"model": stories.model, "prompt": "x", "max_tokens": "9"}),
                 400, param="max_tokens")
    assert_error(*raw(stories, "POST", "/v1/chat/completions", {"model": stories.model, "messages": "hi"}), 400,
                 param="messages")
    assert_error(*raw(stories, "POST", "/v1/completions", {"model": "gpt-5", "prompt": "x"}), 404,
                 code="model_not_found")
    assert_error(*raw(stories, "POST", "/v1/completions", {"model": stories.model, "prompt": [1] * 600}), 400,
                 code="context_length_exceeded")
    assert_error(*raw(stories, "POST", "/v1/completions", {"model": stories.model, "prompt": "x", "max_tokens": 600}),
                 400, param="max_tokens", code="context_length_exceeded")
    assert_error(*raw(stories, "POST", "/v1/completions", {"model": stories.model, "prompt": [1, 9999]}), 400)
    assert_error(*raw(stories, "POST", "/v1/completions", {"model": stories.model, "prompt": "x", "temperature": 7}),
                 400, param="temperature")
    assert_error(*raw(stories, "POST", "/v1/completions", b"x" * (65 << 20)), 413)
    assert_error(*raw(stories, "GET", "/v1/nothing"), 404)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model=stories.model, prompt="x", max_tokens=10**6)
    assert c.completions.create(model=stories.model, prompt=PROMPT, max_tokens=3, temperature=0).choices[0].text


def open_stream(served, body):
    """A raw socket that has sent a streamed request and read its status line."""
    u = urllib.parse.urlparse(served.url)
    s = socket.create_connection((u.hostname, u.port), timeout=60)
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return s


def test_disconnect_cancels_and_queue_overflow_gets_429(start_server, stories):
    served = start_server(stories.model_dir, "--ctx", "2048", "--queue", "1", "--chunk", "8")
    before = metrics(served)
    s = open_stream(served, {"model": served.model, "prompt": [1] * 10, "max_tokens": 2000, "temperature": 0,
                             "stream": True, "extra": 1})
    got = b""
    while got.count(b"data: ") < 3:
        got += s.recv(4096)
    # Running + one waiting: a third is turned away.
    waiting = open_stream(served, {"model": served.model, "prompt": [1, 5], "max_tokens": 2, "stream": True})
    time.sleep(0.3)
    status, body = raw(served, "POST", "/v1/completions", {"model": served.model, "prompt": "x", "max_tokens": 2})
    assert_error(status, body, 429, code="queue_full")
    s.close()  # the running request is cancelled at its next token
    waiting.settimeout(60)
    rest = b""
    while b"[DONE]" not in rest:
        chunk = waiting.recv(4096)
        assert chunk, "the queued request was never served"
        rest += chunk
    waiting.close()
    for _ in range(100):
        after = metrics(served)
        if after['headinfer_requests_total{outcome="cancelled"}'] > before['headinfer_requests_total{outcome="cancelled"}']:
            break
        time.sleep(0.1)
    assert after['headinfer_requests_total{outcome="cancelled"}'] == 1
    assert after["headinfer_generated_tokens_total"] < 1000  # it stopped long before 2000 tokens
    assert after['headinfer_requests_total{outcome="rejected"}'] == 1


def test_prefill_progress_in_stream(start_server, stories):
    served = start_server(stories.model_dir, "--ctx", "512", "--chunk", "16")
    s = open_stream(served, {"model": served.model, "prompt": [1] + [7] * 99, "max_tokens": 2, "stream": True})
    got = b""
    while b"[DONE]" not in got:
        chunk = s.recv(65536)
        assert chunk
        got += chunk
    s.close()
    progress = re.findall(rb": prefill (\d+)/(\d+)", got)
    assert [int(d) for d, _ in progress] == [16, 32, 48, 64, 80, 96, 100]
    assert all(int(t) == 100 for _, t in progress)


def test_generate_kv_save_then_load_continues_as_fresh(stories, tmp_path):
    snap = tmp_path / "gen.hikv"
    ids = [1] + list(range(50, 90))
    ids_arg = lambda x: ",".join(map(str, x))
    generate_cli(stories.model_dir, "--prompt-ids", ids_arg(ids), "-n", "8", "--ctx", "256", "--kv-save", str(snap),
                 "--offload", "all", "--json")
    more = ids + [7, 8, 9]
    fresh = json.loads(generate_cli(stories.model_dir, "--prompt-ids", ids_arg(more), "-n", "12", "--ctx", "256",
                                    "--json"))
    loaded = json.loads(generate_cli(stories.model_dir, "--prompt-ids", ids_arg(more), "-n", "12", "--ctx", "256",
                                     "--kv-load", str(snap), "--json"))
    assert loaded["tokens"] == fresh["tokens"]
    assert loaded["reused_tokens"] >= len(ids) and fresh["reused_tokens"] == 0
    data = bytearray(snap.read_bytes())
    data[-5] ^= 1  # inside the index
    snap.write_bytes(bytes(data))
    r = subprocess.run([str(headinfer_bin()), "generate", "-m", str(stories.model_dir), "--device", "cpu",
                        "--prompt-ids", ids_arg(more), "--kv-load", str(snap)], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith("error: KV snapshot") and "checksum" in r.stderr and r.stderr.count("\n") == 1
