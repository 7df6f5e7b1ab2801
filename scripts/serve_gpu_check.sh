#!/usr/bin/env bash
# `headinfer serve` on the GPU machine (issue 13): a 128K-token document under --gpu-mem 24GiB on a
# random-weight llama3-8b (bf16), five questions over it, and a KV snapshot round trip against dd.
# Writes $OUT/serve_gpu.json (./out when OUT is unset) and the server's log.
#
# On the dev box first: scripts/gpu_check.sh --prepare (it carries cpp-httplib and the llama3
# tokenizer in .carry). On the GPU machine, two calls (each under the 10-minute limit):
#     scripts/serve_gpu_check.sh build   # configure + build headinfer in build-gpu, write the model
#     scripts/serve_gpu_check.sh run     # serve, the five questions, the snapshot, dd
# Knobs: DOC_TOKENS (130000), CTX (131072), GPU_MEM (24GiB), WORK (/tmp/serve_gpu: model, snapshot),
# DD_MIB (4096); for a dry run elsewhere: BIN, MODEL (a checkpoint folder), VOCAB_IDS (random ids
# are drawn below it; 128000), BOS (128000), SERVE_ARGS (extra serve flags).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPS=$ROOT/.carry/deps/usr
OUT=${OUT:-$ROOT/out}
WORK=${WORK:-/tmp/serve_gpu}
DOC_TOKENS=${DOC_TOKENS:-130000}
CTX=${CTX:-131072}
GPU_MEM=${GPU_MEM:-24GiB}
BIN=${BIN:-$ROOT/build-gpu/src/cli/headinfer}
MODEL=${MODEL:-$WORK/llama3-8b}
mkdir -p "$OUT" "$WORK"
export PKG_CONFIG_PATH=$DEPS/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export LD_LIBRARY_PATH=$DEPS/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
CUDNN_ROOT=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null || true)
[[ -n "$CUDNN_ROOT" ]] && export LD_LIBRARY_PATH=$CUDNN_ROOT/lib:$LD_LIBRARY_PATH

case "${1:-}" in
build)
  ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
  start=$(date +%s)
  cmake -S "$ROOT" -B "$ROOT/build-gpu" -DCMAKE_BUILD_TYPE=Release -DHEADINFER_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="${ARCH:-90}" -DCMAKE_PREFIX_PATH="$DEPS" -DHEADINFER_CUDNN_ROOT="$CUDNN_ROOT" \
    >"$OUT/serve_configure.log" 2>&1 || { tail -30 "$OUT/serve_configure.log"; exit 1; }
  cmake --build "$ROOT/build-gpu" --target headinfer -j "$(nproc)" >"$OUT/serve_build.log" 2>&1 ||
    { grep -E "error" "$OUT/serve_build.log" | head -30; exit 1; }
  echo "build: $(( $(date +%s) - start )) s"
  if [[ ! -f "$WORK/llama3-8b/config.json" ]]; then
    start=$(date +%s)
    "$BIN" make-model --shape llama3-8b --dtype bf16 -o "$WORK/llama3-8b"
    cp "$ROOT/.carry/testdata/tokenizers/llama3/tokenizer.json" "$WORK/llama3-8b/"
    echo "make-model: $(( $(date +%s) - start )) s"
  fi
  df -h "$WORK" | tail -1
  ;;
run)
  python3 - "$BIN" "$WORK" "$OUT" "$DOC_TOKENS" "$CTX" "$GPU_MEM" "$MODEL" <<'PY'
import http.client, json, os, random, re, subprocess, sys, time
binary, work, out, doc_tokens, ctx, gpu_mem, model = sys.argv[1:8]
doc_tokens = int(doc_tokens)
vocab, bos, dd_mib = int(os.environ.get("VOCAB_IDS", 128000)), int(os.environ.get("BOS", 128000)), int(os.environ.get("DD_MIB", 4096))
log = open(os.path.join(out, "serve_gpu.log"), "w")
proc = subprocess.Popen([binary, "serve", "-m", model, "--port", "0", "--ctx", ctx, "--gpu-mem", gpu_mem,
                         "--kv-dir", work, "--model-name", "llama3-8b"] + os.environ.get("SERVE_ARGS", "").split(),
                        stdout=subprocess.PIPE, stderr=log, text=True)
line = proc.stdout.readline()
m = re.search(r"listening on http://([\d.]+):(\d+)", line)
if not m:
    proc.kill(); sys.exit("serve did not start: " + line + open(os.path.join(out, "serve_gpu.log")).read()[-3000:])
host, port = m.group(1), int(m.group(2))
print(line.strip(), flush=True)

def post(path, body):
    c = http.client.HTTPConnection(host, port, timeout=3600)
    t0 = time.time()
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse(); data = json.loads(r.read())
    if r.status != 200: raise SystemExit(f"{path}: HTTP {r.status}: {data}")
    return data, time.time() - t0

def metrics():
    c = http.client.HTTPConnection(host, port, timeout=60); c.request("GET", "/metrics")
    return {l.rsplit(" ", 1)[0]: float(l.rsplit(" ", 1)[1]) for l in c.getresponse().read().decode().splitlines()
            if l and not l.startswith("#")}

rng = random.Random(13)
doc = [bos] + [rng.randrange(0, vocab) for _ in range(doc_tokens - 1)]  # <|begin_of_text|> + random ids
prompt, questions = list(doc), []
for q in range(5):
    prompt += [rng.randrange(0, vocab) for _ in range(40 + 7 * q)]  # the question: only these are new
    r, secs = post("/v1/completions", {"model": "llama3-8b", "prompt": prompt, "max_tokens": 16, "temperature": 0})
    u = r["usage"]
    questions.append({"question": q + 1, "seconds": round(secs, 3), "prompt_tokens": u["prompt_tokens"],
                      "cached_tokens": u["prompt_tokens_details"]["cached_tokens"],
                      "prefilled_tokens": u["prompt_tokens"] - u["prompt_tokens_details"]["cached_tokens"],
                      "completion_tokens": u["completion_tokens"]})
    print(json.dumps(questions[-1]), flush=True)
m_after = metrics()

save, save_wall = post("/v1/kv/save", {"name": "doc"})
snap = os.path.join(work, "doc.hikv")
fd = os.open(snap, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)  # read from disk
post("/v1/completions", {"model": "llama3-8b", "prompt": [bos, 5, 6], "max_tokens": 1})  # drops the context
load, load_wall = post("/v1/kv/load", {"name": "doc"})
prompt += [rng.randrange(0, vocab) for _ in range(50)]
r, secs = post("/v1/completions", {"model": "llama3-8b", "prompt": prompt, "max_tokens": 16, "temperature": 0})
after_load = {"seconds": round(secs, 3), "cached_tokens": r["usage"]["prompt_tokens_details"]["cached_tokens"],
              "prompt_tokens": r["usage"]["prompt_tokens"]}
proc.terminate(); proc.wait(timeout=120)

def dd(args):
    t = subprocess.run(["dd"] + args, capture_output=True, text=True).stderr.strip().splitlines()[-1]
    return t
dd_write = dd(["if=/dev/zero", f"of={work}/dd.bin", "bs=1M", f"count={dd_mib}", "oflag=direct", "conv=fsync"])
dd_read = dd([f"if={work}/dd.bin", "of=/dev/null", "bs=1M", "iflag=direct"])
os.remove(f"{work}/dd.bin")
os.remove(snap)
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except FileNotFoundError:
    gpu = "none (dry run)"
result = {"gpu": gpu, "gpu_mem": gpu_mem, "context": int(ctx), "document_tokens": doc_tokens, "questions": questions,
          "first_answer_seconds": questions[0]["seconds"], "later_answer_seconds": [q["seconds"] for q in questions[1:]],
          "prefill_seconds_total": m_after.get("headinfer_prefill_seconds_total"),
          "kv_bytes": {"device": m_after.get('headinfer_kv_bytes{tier="device"}'),
                       "host": m_after.get('headinfer_kv_bytes{tier="host"}')},
          "snapshot_save": {**save, "wall_seconds": round(save_wall, 3)},
          "snapshot_load": {**load, "wall_seconds": round(load_wall, 3), "page_cache_dropped": True},
          "after_load": after_load, "dd_mib": dd_mib, "dd_write_direct": dd_write, "dd_read_direct": dd_read}
json.dump(result, open(os.path.join(out, "serve_gpu.json"), "w"), indent=1)
print(json.dumps(result, indent=1))
PY
  ;;
*)
  echo "usage: scripts/serve_gpu_check.sh build|run" >&2
  exit 1
  ;;
esac
