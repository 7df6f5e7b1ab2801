#!/usr/bin/env bash
# Issue 6's long runs on the GPU machine, one sub-command per question. Every run is one
# `headinfer bench --json` under `timeout`, its JSON and log under $OUT, and one summary line (also
# appended to $OUT/long-summary.jsonl). Random weights, batch 1, per ../shared/BENCH.md.
#
#   bench/long_run.sh planmax            largest CAP_SHAPE context whose plan fits --gpu-mem $GPU_MEM and
#                                        this host's memory (`headinfer plan --json`, bisection over --ctx)
#   bench/long_run.sh capacity CTX       prefill CTX random tokens of CAP_SHAPE, then decode, under the cap
#   bench/long_run.sh peers CTX[,CTX..]  transformers default and offloaded caches of CAP_SHAPE under the
#                                        same cap (bench/peers.py's measure); out of memory is a result
#   bench/long_run.sh e2e1m              prefill E2E_CTX (1M) tokens of E2E_SHAPE (llama3.2-1b) and decode;
#                                        decode s/token against the link floor: bytes streamed per token
#                                        over the pinned H2D rate, probed in the same call
#   bench/long_run.sh decode4m [SHAPE]   decode-only (random KV, no prefill) at DECODE_CTX (4M) tokens of
#                                        SHAPE; without SHAPE, the built-in shape with the most KV per token
#                                        whose plan fits this host
#
# Environment (defaults in brackets):
#   HI        the binary [build-gpu/src/cli/headinfer; built with `BUILD_ONLY=1 bench/run_gpu.sh` if missing]
#   OUT [./out]  DEVICE [cuda]  GPU_MEM [24GiB; "" = uncapped]  CHUNK [unset: the planner picks; a value passes --chunk]  HYBRID [off]  OFFLOAD [auto]
#   N_DECODE  decoded tokens [capacity and planmax 8, e2e1m 32, decode4m 16]
#   TIMEOUT   seconds per bench run [570: the device machine takes at most 600 s per command]
#   HOST_RESERVE_GIB  host memory left to the OS and the process by planmax/decode4m [8]
#   HOST_MEM  host bytes for planmax/decode4m's plans [MemAvailable - the random weights' host copy - reserve]
#   KV_DTYPE  what planmax/decode4m plan the KV as [bf16, the CUDA device's KV for bf16 weights; f32 on cpu]
#   CAP_SHAPE [llama3-8b]  E2E_SHAPE [llama3.2-1b]  E2E_CTX [1M]  DECODE_CTX [4M]  GRAN [8192 tokens]
#   SHAPES    decode4m's candidates [llama3-8b mistral-7b qwen2.5-7b llama3.2-1b]
#   PEER_CAP_GIB [24]  PEER_N_DECODE [8]  PEER_OFFLOADED_N_DECODE [2]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/out}
HI=${HI:-$ROOT/build-gpu/src/cli/headinfer}
DEVICE=${DEVICE:-cuda}
GPU_MEM=${GPU_MEM-24GiB}
CHUNK=${CHUNK:-}
chunk_flag=()  # the defaults unless CHUNK is given: what users run
[[ -n "$CHUNK" ]] && chunk_flag=(--chunk "$CHUNK")
HYBRID=${HYBRID:-off}
OFFLOAD=${OFFLOAD:-auto}
TIMEOUT=${TIMEOUT:-570}
HOST_RESERVE_GIB=${HOST_RESERVE_GIB:-8}
KV_DTYPE=${KV_DTYPE:-$([[ $DEVICE == cpu ]] && echo f32 || echo bf16)}
CAP_SHAPE=${CAP_SHAPE:-llama3-8b}
E2E_SHAPE=${E2E_SHAPE:-llama3.2-1b}
E2E_CTX=${E2E_CTX:-1M}
DECODE_CTX=${DECODE_CTX:-4M}
GRAN=${GRAN:-8192}
SHAPES=${SHAPES:-llama3-8b mistral-7b qwen2.5-7b llama3.2-1b}
mkdir -p "$OUT"

die() {
  echo "long_run: $*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

ensure_binary() {
  [[ -x "$HI" ]] && return
  if [[ "$HI" == "$ROOT/build-gpu/src/cli/headinfer" ]] && command -v nvidia-smi >/dev/null; then
    echo "building $HI (bench/run_gpu.sh, BUILD_ONLY=1)"
    BUILD_ONLY=1 OUT="$OUT" "$ROOT/bench/run_gpu.sh" >/dev/null
  fi
  [[ -x "$HI" ]] || die "no headinfer binary at $HI: set HI=path/to/headinfer (or build with BUILD_ONLY=1 bench/run_gpu.sh)"
}

# 4096, 128K, 1M (K = 1024, as headinfer's --ctx) -> tokens.
tokens() {
  local v=${1^^} n mult=1
  case $v in
    *K) n=${v%K}; mult=1024 ;;
    *M) n=${v%M}; mult=1048576 ;;
    *) n=$v ;;
  esac
  if ! [[ "$n" =~ ^[0-9]+$ ]] || ((10#$n == 0)); then die "'$1' is not a context length (4096, 128K, 1M)"; fi
  echo $((10#$n * mult))
}

gpu_mem_flag=()
[[ -n "$GPU_MEM" ]] && gpu_mem_flag=(--gpu-mem "$GPU_MEM")
cap_label=${GPU_MEM:-uncapped}

# One field of a JSON document on stdin (a.b for nested keys); "" when absent, null or not JSON.
json_field() {
  python3 -c '
import json, sys
try:
    v = json.load(sys.stdin)
except ValueError:
    v = None
for k in sys.argv[1].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v)' "$1"
}

# The plan of SHAPE at CTX tokens with HOST bytes of host memory, as JSON on stdout (also when it
# does not fit: plan prints the JSON, then exits 1). The KV dtype and the chunk are bench's on
# CUDA; --link-gbps only keeps plan from probing the link, it changes no placement.
plan_json() {
  local shape=$1 ctx=$2 host=$3
  "$HI" plan --shape "$shape" --ctx "$ctx" --gpu-mem "${GPU_MEM:-1TiB}" --host-mem "$host" --kv-dtype "$KV_DTYPE" \
    --hybrid off --link-gbps 1 --device cpu -t 1 "${chunk_flag[@]}" --json 2>/dev/null || true
}

# Host memory a plan of SHAPE may count on while bench runs: what is available now, less the
# random checkpoint bench keeps in host memory (the size of its weights) and a reserve.
host_for_plan() {
  local shape=$1
  if [[ -n "${HOST_MEM:-}" ]]; then
    echo "$HOST_MEM"
    return
  fi
  local avail weights
  avail=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
  [[ "$avail" =~ ^[0-9]+$ ]] || die "cannot read MemAvailable from /proc/meminfo: set HOST_MEM"
  avail=$((avail * 1024))
  weights=$(plan_json "$shape" 4096 "$avail" | json_field weight_bytes)
  [[ -n "$weights" ]] || die "headinfer plan --shape $shape failed: run it by hand to see why"
  local host=$((avail - weights - HOST_RESERVE_GIB * 1073741824))
  ((host > 0)) || die "$shape: MemAvailable $((avail >> 20)) MiB leaves no host memory after its weights" \
    "($((weights >> 20)) MiB) and the ${HOST_RESERVE_GIB} GiB reserve: set HOST_MEM or HOST_RESERVE_GIB"
  echo "$host"
}

# Host bytes as "97.3 GiB" (HOST_MEM may be a size like 100GiB already).
host_label() {
  [[ "$1" =~ ^[0-9]+$ ]] && python3 -c 'import sys; print(f"{int(sys.argv[1]) / 2**30:.1f} GiB")' "$1" || echo "$1"
}

# Prints the summary line of a bench JSON and appends it, with the extra key=value fields, to
# $OUT/long-summary.jsonl.
summarize() {
  local name=$1 json=$2
  shift 2
  python3 - "$name" "$json" "$OUT/long-summary.jsonl" "$@" <<'EOF'
import json, sys
name, path, sink = sys.argv[1:4]
def value(v):
    try:
        return float(v)
    except ValueError:
        return v
extra = {k: value(v) for k, v in (kv.split("=", 1) for kv in sys.argv[4:])}
doc = json.load(open(path))
for r in doc["results"]:
    pre = "decode-only (random KV, filled in %.1f s)" % r["random_fill_seconds"] if r.get("decode_only") \
        else "prefill %.1f s" % r["prefill_seconds"]
    line = (f"{name}: {doc['model']} on {doc['device']}, ctx {r['context']}, {pre}, "
            f"decode {r['decode_seconds_per_token']:.4f} s/token (median of {doc['n_decode']}), "
            f"GPU peak {r['gpu_peak_bytes'] / 2**30:.2f} GiB, host {r['host_bytes'] / 2**30:.2f} GiB "
            f"({r['host_bytes']} B), link {r['link_gbps_achieved']:.1f} GB/s")
    if "floor_seconds_per_token" in extra:
        floor = extra["floor_seconds_per_token"]
        line += (f"; link floor {floor:.4f} s/token ({r['link_bytes_per_token']} B/token at "
                 f"{extra['floor_link_gbps']:.1f} GB/s, {extra['floor_source']}), "
                 f"decode/floor {r['decode_seconds_per_token'] / floor:.2f}" if floor > 0 else "; no bytes streamed")
    print(line)
    with open(sink, "a") as f:
        f.write(json.dumps(dict(run=name, model=doc["model"], device=doc["device"], gpu_mem=doc["gpu_mem"],
                                n_decode=doc["n_decode"], **r, **extra)) + "\n")
EOF
}

# run_bench NAME SHAPE CTX N_DECODE [bench flags...]: one bench process under the timeout.
run_bench() {
  local name=$1 shape=$2 ctx=$3 n=$4
  shift 4
  local json=$OUT/long-$name.json log=$OUT/long-$name.log rc=0
  local cmd=("$HI" bench --shape "$shape" --device "$DEVICE" --ctx "$ctx" "${gpu_mem_flag[@]}" --n-decode "$n"
             "${chunk_flag[@]}" --hybrid "$HYBRID" --offload "$OFFLOAD" --json "$@")
  echo "$name: ${cmd[*]#$ROOT/}  (timeout ${TIMEOUT} s)"
  echo "${cmd[*]}" >"$log"
  timeout -k 30 "$TIMEOUT" "${cmd[@]}" >"$json" 2>>"$log" || rc=$?
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    rm -f "$json"
    local last
    last=$(tail -n +2 "$log" | grep -v '^ *$' | tail -1)
    echo "$name: timed out after $TIMEOUT s; last progress: ${last:-none yet (bench logs a line every 10 s)}"
    return 1
  elif [[ $rc -ne 0 ]]; then
    rm -f "$json"
    echo "$name: failed (exit $rc): $(tail -n +2 "$log" | tail -2)"
    return 1
  fi
  LAST_JSON=$json
}

cmd_planmax() {
  local shape=$CAP_SHAPE n=${N_DECODE:-8} host lo=0 hi=$GRAN mid detail
  host=$(host_for_plan "$shape")
  fits_at() { [[ $(plan_json "$shape" $(($1 + n)) "$host" | json_field fits) == True ]]; }
  while fits_at "$hi"; do
    lo=$hi
    hi=$((hi * 2))
    ((hi <= 1 << 34)) || die "every context up to $lo tokens fits: is --gpu-mem or the host limit unset?"
  done
  if ((lo == 0)); then
    echo "planmax $shape: not even $GRAN tokens fit: $(plan_json "$shape" $((GRAN + n)) "$host" | json_field message)"
    return 1
  fi
  # lo fits, hi does not; both multiples of GRAN.
  while ((hi - lo > GRAN)); do
    mid=$(((lo + hi) / 2 / GRAN * GRAN))
    if fits_at "$mid"; then lo=$mid; else hi=$mid; fi
  done
  plan_json "$shape" $((lo + n)) "$host" >"$OUT/long-planmax.json"
  detail=$(python3 - "$OUT/long-planmax.json" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))
g = lambda b: f"{b / 2**30:.2f} GiB"
print(f"resident {p['n_resident_groups']} of {p['n_groups']} groups, GPU {g(p['gpu_bytes_total'])}, "
      f"KV on GPU {g(p['kv_bytes_gpu'])}, KV on host {g(p['kv_bytes_host'])}")
EOF
  )
  echo "planmax $shape: largest context whose plan fits --gpu-mem $cap_label and $(host_label "$host") of host" \
    "(MemAvailable less the weights' host copy and ${HOST_RESERVE_GIB} GiB, or HOST_MEM): $lo tokens" \
    "($((lo / 1024))K; planned at ctx + $n decoded, $KV_DTYPE KV, chunk ${CHUNK:-planned}; first miss: $hi); $detail"
  echo "next: bench/long_run.sh capacity $lo"
}

cmd_capacity() {
  [[ $# -eq 1 ]] || die "usage: bench/long_run.sh capacity CTX (e.g. 640K; bench/long_run.sh planmax finds it)"
  local ctx n=${N_DECODE:-8}
  ctx=$(tokens "$1")
  run_bench "capacity-$CAP_SHAPE-$ctx" "$CAP_SHAPE" "$ctx" "$n" || return 1
  summarize "capacity $CAP_SHAPE $cap_label" "$LAST_JSON"
}

cmd_peers() {
  [[ $# -eq 1 ]] || die "usage: bench/long_run.sh peers CTX[,CTX...] (e.g. 32K,64K,128K)"
  local list=() c rc=0
  for c in ${1//,/ }; do list+=("$(tokens "$c")"); done
  local sink=$OUT/long-peers.jsonl
  echo "peers: transformers default and offloaded caches, $CAP_SHAPE, ${PEER_CAP_GIB:-24} GiB cap, ctx ${list[*]}" \
    "(timeout $TIMEOUT s)"
  timeout -k 30 "$TIMEOUT" python3 - "$ROOT/bench" "$CAP_SHAPE" "${PEER_CAP_GIB:-24}" "${PEER_N_DECODE:-8}" \
    "${PEER_OFFLOADED_N_DECODE:-2}" "$sink" "${list[@]}" <<'EOF' 2>"$OUT/long-peers.log" || rc=$?
import json, sys
sys.path.insert(0, sys.argv[1])
import peers  # bench/peers.py: the same peer the results tables use
shape, cap, n, n_off, sink = sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
model = peers.build_model(shape, "cuda")
for ctx in map(int, sys.argv[7:]):
    for cache, nd in (("default", n), ("offloaded", n_off)):
        # one timed generate() after the first call: these contexts take minutes per call
        r = peers.measure(model, shape, ctx, cache, cap, nd, 1, "cuda", first_in_process=False)
        with open(sink, "a") as f:
            f.write(json.dumps(r) + "\n")
        peak = r.get("gpu_peak_bytes")
        peak = "—" if peak is None else f"{peak / 2**30:.2f} GiB"
        if "error" in r:
            print(f"peers: {r['system']}, {cap:g} GiB cap, ctx {ctx}: {r['error']} (GPU peak {peak})", flush=True)
        else:
            print(f"peers: {r['system']}, {cap:g} GiB cap, ctx {ctx}: prefill {r['prefill_seconds']:.1f} s, "
                  f"decode {r['decode_seconds_per_token']:.4f} s/token (median of {nd}), GPU peak {peak}", flush=True)
EOF
  if [[ $rc -ne 0 ]]; then
    echo "peers: stopped (exit $rc$( [[ $rc -eq 124 ]] && echo ", timed out after $TIMEOUT s")): $(tail -2 "$OUT/long-peers.log")"
    return 1
  fi
}

# The pinned host-to-device rate, probed now: `headinfer plan` measures the link of DEVICE's own
# Transfer (a fresh cache, so it is measured in this call, not read from an earlier one); where
# PyTorch is installed, also its 1 GiB pinned copy (bench/peers.py's floor), which is used when present.
probe_link() {
  local shape=$1 ctx=$2 cache=$OUT/long-link-probe-cache
  rm -rf "$cache"
  XDG_CACHE_HOME=$cache "$HI" plan --shape "$shape" --ctx "$ctx" --gpu-mem "${GPU_MEM:-1TiB}" \
    --device "$DEVICE" --hybrid off "${chunk_flag[@]}" --json >"$OUT/long-link-probe.json" 2>"$OUT/long-link-probe.log" || true
  PROBE_GBPS=$(json_field link_gbps <"$OUT/long-link-probe.json")
  [[ -n "$PROBE_GBPS" ]] || die "link probe failed: $(tail -2 "$OUT/long-link-probe.log")"
  PROBE_SOURCE="headinfer plan's probe of $(json_field device <"$OUT/long-link-probe.json"), 256 MiB"
  echo "link probe: $(printf %.2f "$PROBE_GBPS") GB/s ($PROBE_SOURCE)"
  local torch_gbps
  torch_gbps=$(python3 - 2>/dev/null <<'EOF' || true
import time, torch
assert torch.cuda.is_available()
n = 1 << 30
host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
dev = torch.empty(n, dtype=torch.uint8, device="cuda")
dev.copy_(host, non_blocking=True)
torch.cuda.synchronize()
t = []
for _ in range(5):
    t0 = time.perf_counter()
    dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    t.append(time.perf_counter() - t0)
print(f"{n / sorted(t)[2] / 1e9:.2f}")
EOF
  )
  if [[ -n "$torch_gbps" ]]; then
    echo "link probe: $torch_gbps GB/s (PyTorch pinned H2D, 1 GiB, median of 5)"
    PROBE_GBPS=$torch_gbps
    PROBE_SOURCE="PyTorch pinned H2D 1 GiB median of 5; headinfer's own probe $(printf %.2f "$(json_field link_gbps <"$OUT/long-link-probe.json")") GB/s"
  fi
}

cmd_e2e1m() {
  local ctx n=${N_DECODE:-32}
  ctx=$(tokens "$E2E_CTX")
  probe_link "$E2E_SHAPE" $((ctx + n))
  run_bench "e2e-$E2E_SHAPE-$ctx" "$E2E_SHAPE" "$ctx" "$n" || return 1
  local floor
  floor=$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print(r["link_bytes_per_token"] / (float(sys.argv[2]) * 1e9))' "$LAST_JSON" "$PROBE_GBPS")
  summarize "e2e $E2E_SHAPE $cap_label" "$LAST_JSON" "floor_seconds_per_token=$floor" "floor_link_gbps=$PROBE_GBPS" \
    "floor_source=$PROBE_SOURCE"
}

cmd_decode4m() {
  [[ $# -le 1 ]] || die "usage: bench/long_run.sh decode4m [SHAPE]"
  local ctx n=${N_DECODE:-16} shape=${1:-} s host doc
  ctx=$(tokens "$DECODE_CTX")
  if [[ -z "$shape" ]]; then
    # Candidates by KV per token, largest first; the first whose plan fits is the largest shape
    # this host holds at ctx.
    local ranked
    ranked=$(for s in $SHAPES; do
      echo "$(plan_json "$s" 4096 1TiB | json_field kv_bytes_per_token) $s"
    done | sort -rn | awk '{print $2}')
    for s in $ranked; do
      host=$(host_for_plan "$s")
      doc=$(plan_json "$s" $((ctx + n)) "$host")
      if [[ $(json_field fits <<<"$doc") == True ]]; then
        shape=$s
        break
      fi
      echo "decode4m: $s does not fit $ctx tokens: $(json_field message <<<"$doc")"
    done
    [[ -n "$shape" ]] || die "no shape of ($SHAPES) fits $ctx tokens under --gpu-mem $cap_label on this host"
  else
    host=$(host_for_plan "$shape")
    doc=$(plan_json "$shape" $((ctx + n)) "$host")
    [[ $(json_field fits <<<"$doc") == True ]] ||
      echo "decode4m: warning: the plan of $shape at $ctx tokens does not fit $(host_label "$host") of host:" \
        "$(json_field message <<<"$doc"); running anyway"
  fi
  echo "decode4m: $shape at $ctx tokens, planned with $(host_label "$host") of host"
  run_bench "decode-only-$shape-$ctx" "$shape" "$ctx" "$n" --decode-only || return 1
  summarize "decode4m $shape $cap_label" "$LAST_JSON"
}

[[ $# -ge 1 ]] || die "give a sub-command: planmax, capacity CTX, peers CTX, e2e1m or decode4m [SHAPE] (see --help)"
sub=$1
shift
case $sub in
  -h | --help | help) usage ;;
  planmax | capacity | peers | e2e1m | decode4m)
    [[ $sub == peers ]] || ensure_binary
    "cmd_$sub" "$@"
    ;;
  *) die "unknown sub-command '$sub' (planmax, capacity, peers, e2e1m, decode4m; see --help)" ;;
esac
