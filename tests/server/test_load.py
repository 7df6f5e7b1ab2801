"""Load on loopback (issue 13), bounded: 16 concurrent clients, 200 requests, a share of them
malformed or cancelled mid-stream. Every request is answered (200, its 4xx, or 429 when the queue
is full), the server stays up, and its RSS after the load equals its RSS after a first round of
16 concurrent requests within a margin (no leak)."""
import concurrent.futures
import json
import os
import random
import socket
import time
import urllib.parse

from test_serve import metrics, raw

N_CLIENTS = 16
N_REQUESTS = 200


def cancelled_stream(served, rng):
    u = urllib.parse.urlparse(served.url)
    body = json.dumps({"model": served.model, "prompt": [1] + [rng.randrange(3, 512) for _ in range(20)],
                       "max_tokens": 300, "temperature": 0, "stream": True}).encode()
    with socket.create_connection((u.hostname, u.port), timeout=120) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while got.count(b"data: ") < 2:
            chunk = s.recv(4096)
            if not chunk:  # a 429 (queue full) ends at once
                break
            got += chunk
    return "cancelled" if b"data: " in got else ("429" if b" 429 " in got else "closed")


def one_request(served, i):
    rng = random.Random(i)
    kind = rng.choices(["ok", "stream", "malformed", "bad_field", "cancel"], [50, 15, 10, 10, 15])[0]
    if kind == "cancel":
        return kind, cancelled_stream(served, rng)
    if kind == "malformed":
        status, body = raw(served, "POST", "/v1/completions", b'{"model": ' + bytes([rng.randrange(32, 127)]) * 7)
        return kind, status
    if kind == "bad_field":
        status, body = raw(served, "POST", "/v1/chat/completions", {"model": served.model, "messages": [{"role": 3}]})
        return kind, status
    prompt = [1] + [rng.randrange(3, 512) for _ in range(rng.randrange(5, 60))]
    status, body = raw(served, "POST", "/v1/completions", {"model": served.model, "prompt": prompt,
                                                          "max_tokens": rng.randrange(1, 12), "temperature": 0,
                                                          "stream": kind == "stream"})
    if status == 200 and kind == "stream":
        assert body.rstrip().endswith("data: [DONE]"), body[-200:]
    return kind, status


def test_load_16_clients_200_requests(start_server, stories):
    served = start_server(stories.model_dir, "--ctx", "512", "--queue", "8", "--chunk", "16")
    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(N_CLIENTS) as pool:
        warm = list(pool.map(lambda i: one_request(served, 1000 + i), range(N_CLIENTS)))
    assert all(s in (200, 400, 429, "cancelled", "429") for _, s in warm), warm
    rss_first = served.rss_kib()
    with concurrent.futures.ThreadPoolExecutor(N_CLIENTS) as pool:
        results = list(pool.map(lambda i: one_request(served, i), range(N_REQUESTS)))
    elapsed = time.time() - t0
    assert len(results) == N_REQUESTS
    for kind, status in results:
        if kind in ("ok", "stream"):
            assert status in (200, 429), (kind, status)
        elif kind in ("malformed", "bad_field"):
            assert status in (400, 429), (kind, status)
        else:
            assert status in ("cancelled", "429"), (kind, status)
    # How many the queue turns away depends on the machine's speed (ASan: most); some are served.
    assert sum(1 for k, s in results if k in ("ok", "stream") and s == 200) >= 10
    assert raw(served, "GET", "/health")[0] == 200
    m = metrics(served)
    assert m["headinfer_queue_length"] == 0
    time.sleep(0.5)
    rss_after = served.rss_kib()
    # Per-thread malloc arenas and the tokenizer's caches settle in the first round; what is left
    # is a leak of more than the margin: 16 MiB, or 10 %.
    if os.environ.get("HEADINFER_RSS_CHECK", "1") != "0":  # off under ASan, whose quarantine keeps freed memory
        assert rss_after <= rss_first + max(16 * 1024, rss_first // 10), (rss_first, rss_after)
    print(f"[load] {N_REQUESTS} requests by {N_CLIENTS} clients in {elapsed:.1f} s; "
          f"RSS {rss_first} KiB after the first round, {rss_after} KiB after; "
          f"outcomes {sorted((k, str(s)) for k, s in set(results))}")
