// Split-KV decode attention: one query row against n keys of each of a group's kv heads (grid.y), for
// all of a kv head's GQA query heads at once, so each key and value row is read from memory exactly
// once. A kv head's blocks compute the same whatever the number of heads in the call.
//
// Bound by reading K and V (n x d x 2 x 2 bytes for bf16), so the layout serves the loads: a group
// of LPK lanes holds one key row, each lane one 16-byte vector of it (8 bf16 or 4 f32); a block
// iteration covers U rows per group. The rows reach shared memory by cp.async, kStages iterations
// ahead, so copies stay in flight while the block computes (loading into registers, as this kernel
// first did, left the memory idle during the arithmetic: 1952 GB/s at 128K keys on an H100). Every group runs its own online softmax (base 2, the scale folded into q) for
// each head; the block merges its groups at the end, and a second kernel merges the blocks (splits)
// exactly as attention_merge does. A layer's grid has about 2 blocks per SM, one wave, so all SMs
// stream at once and each block keeps 16-32 KB of loads in flight. Splits are sized for the whole
// layer (its kv heads share one wave), which keeps the partials the combine reads small; on an
// H100 at 128K keys and 8 kv heads that measured the same as one wave per call (1952 against
// 1978 GB/s, a third under the read floor), so the combine is not what limits this kernel.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>

#include "attention_internal.h"
#include "cuda_common.h"
#include "cuda_ops.h"

namespace headinfer::cuda {
namespace {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;
constexpr int kBlocksPerSm = 2;         // splits per SM the grid aims for: one wave, no tail
constexpr int64_t kMinKeysPerSplit = 256;  // a few block iterations per split: fewer, fuller blocks
constexpr int64_t kSplitRound = 64;        // split sizes are multiples of this
constexpr int kCombineWarps = 32;       // splits merged in parallel per head

// Key rows per lane group in flight: 8 (32 KB per block), 4 where 8 query heads' registers leave
// no room for more.
template <int G>
constexpr int unroll_for() { return G <= 4 ? 8 : 4; }

struct DecodeParams {
  const float* q;       // F32 [n_kv_heads][n_q_heads * D]: the one query row
  const void* k;        // KV dtype [n_keys, D] of kv head 0, rows kv_ld apart
  const void* v;
  int64_t kv_ld;
  int64_t kv_head_stride;  // elements from one kv head's K (V) to the next's
  int n_q_heads;
  int64_t j0, j1;       // the visible keys [j0, j1)
  int64_t keys_per_split;
  int64_t settled;      // keys below this may be read before pdl_wait() (AttentionArgs::settled_keys)
  float scale_log2;     // scale * log2(e): scores come out in base 2
  // Soft-capping (gemma2) in base 2: s2 := tanh(s2 * cap_inv) * cap_mul with cap_mul = cap * log2(e)
  // and cap_inv = 1 / cap_mul, i.e. tanh(s / cap) * cap in natural units. cap_mul 0: none.
  float cap_mul, cap_inv;
  float* out;           // F32 [n_kv_heads][n_q_heads * D] (one split)
  float* lse;           // F32 [n_kv_heads][n_q_heads] (one split)
  float* partials;      // F32 [splits, n_kv_heads * n_q_heads, D + 1]: out then natural lse (several splits)
};

template <typename KV>
struct KvVec {
  static constexpr int kN = 16 / sizeof(KV);
  KV x[kN];
};

// cp.async (sm_80+): 16 bytes from global to shared memory without passing through registers.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const auto s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Block iterations whose K and V rows are in flight at once: the block copies iteration it + 2's
// rows into shared memory while it computes iteration it's, so its loads never stop for the
// arithmetic (32 KB a stage where U = 8: 96 KB a block, two blocks an SM on Hopper).
constexpr int kStages = 3;

template <typename KV, int D, int G>
constexpr size_t decode_smem_bytes() {
  constexpr int kVec = KvVec<KV>::kN;
  constexpr int kSlots = kDecodeWarps * (32 / (D / kVec));
  return size_t{kStages} * 2 * kSlots * unroll_for<G>() * D * sizeof(KV);
}

template <typename KV, int D, int G>
__global__ void __launch_bounds__(kDecodeThreads) decode_kernel(DecodeParams p) {
  constexpr int kVec = KvVec<KV>::kN;
  constexpr int kLanesPerKey = D / kVec;
  constexpr int kKeysPerWarp = 32 / kLanesPerKey;
  constexpr int kSlots = kDecodeWarps * kKeysPerWarp;
  constexpr int kUnroll = unroll_for<G>();
  constexpr int kStep = kSlots * kUnroll;  // keys per block iteration
  constexpr int kStageElems = kStep * D;   // one stage's K rows (and again its V rows)
  // The stages, then (after the loop) the slots' accumulators over the same bytes.
  extern __shared__ __align__(16) unsigned char dyn_s[];
  KV* const stage_s = reinterpret_cast<KV*>(dyn_s);  // [kStages][K, V][kStep][D]
  static_assert(sizeof(float) * kSlots * G * D <= decode_smem_bytes<KV, D, G>(), "acc_s must fit the stages");
  auto acc_s = reinterpret_cast<float (*)[G][D]>(dyn_s);  // [kSlots][G][D]
  __shared__ float m_s[kSlots][G];          // per slot max, then its merge weight
  __shared__ float l_s[kSlots][G];
  __shared__ float head_s[G][2];            // block max and normaliser per head

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int grp = lane / kLanesPerKey, sub = lane % kLanesPerKey;
  const int slot = warp * kKeysPerWarp + grp;
  const int64_t lo = p.j0 + blockIdx.x * p.keys_per_split;
  const int64_t hi = min(p.j1, lo + p.keys_per_split);

  const int64_t head0 = blockIdx.y * int64_t{p.n_q_heads};  // this kv head's first q head in the call
  const KV* kg = static_cast<const KV*>(p.k) + blockIdx.y * p.kv_head_stride;
  const KV* vg = static_cast<const KV*>(p.v) + blockIdx.y * p.kv_head_stride;

  // Iteration it's rows [lo + it * kStep, + kStep) into stage it % kStages: 16-byte pieces, adjacent
  // threads on adjacent pieces of a row (rows past hi copy row lo; their scores are masked).
  const int64_t n_iter = hi > lo ? (hi - lo + kStep - 1) / kStep : 0;
  auto issue = [&](int64_t it) {
    KV* ks = stage_s + (it % kStages) * 2 * kStageElems;
    KV* vs = ks + kStageElems;
    const int64_t base = lo + it * kStep;
#pragma unroll
    for (int c = threadIdx.x; c < kStep * kLanesPerKey; c += kDecodeThreads) {
      const int r = c / kLanesPerKey, piece = c % kLanesPerKey;
      const int64_t row = base + r < hi ? base + r : lo;
      cp_async16(ks + r * D + piece * kVec, kg + row * p.kv_ld + piece * kVec);
      cp_async16(vs + r * D + piece * kVec, vg + row * p.kv_ld + piece * kVec);
    }
  };
  // The first stages whose rows are all settled are copied before pdl_wait(), so under PDL they
  // land while the kernel before (the copy of this step's rows) still runs; the rest after it. One
  // commit group per stage either way, in stage order.
  int early = 0;
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st)
    if (early == st && st < n_iter && min(hi, lo + (st + 1) * kStep) <= p.settled) early = st + 1;
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < early) {
      issue(st);
      cp_async_commit();
    }
  }
  pdl_wait();
  pdl_trigger();
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st >= early) {
      if (st < n_iter) issue(st);
      cp_async_commit();  // empty groups keep the count uniform
    }
  }
  const float* q_row = p.q + head0 * D;
  float q[G][kVec], acc[G][kVec], m[G], l[G];
#pragma unroll
  for (int h = 0; h < G; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      q[h][e] = h < p.n_q_heads ? q_row[h * D + sub * kVec + e] * p.scale_log2 : 0.0f;
      acc[h][e] = 0.0f;
    }
  }

  for (int64_t it = 0; it < n_iter; ++it) {
    __syncthreads();  // every thread is done with the stage the next copy overwrites
    if (it + kStages - 1 < n_iter) issue(it + kStages - 1);
    cp_async_commit();
    cp_async_wait<kStages - 1>();  // this thread's pieces of iteration it have landed
    __syncthreads();               // and everyone's
    const KV* ks = stage_s + (it % kStages) * 2 * kStageElems;
    const KV* vs = ks + kStageElems;
    const int64_t base = lo + it * kStep;
    KvVec<KV> kr[kUnroll], vr[kUnroll];
    bool ok[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      // Slots of one unroll step are consecutive rows (the same keys per lane as loading them
      // directly: the arithmetic and its order are the kernel's, whatever the loads).
      const int r = u * kSlots + slot;
      ok[u] = base + r < hi;
      *reinterpret_cast<uint4*>(kr[u].x) = *reinterpret_cast<const uint4*>(ks + r * D + sub * kVec);
      *reinterpret_cast<uint4*>(vr[u].x) = *reinterpret_cast<const uint4*>(vs + r * D + sub * kVec);
    }
#pragma unroll
    for (int h = 0; h < G; ++h) {
      if (h >= p.n_q_heads) break;  // uniform across the block
      float s[kUnroll];
      float s_max = -INFINITY;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < kVec; ++e) dot += q[h][e] * to_f32(kr[u].x[e]);
#pragma unroll
        for (int o = kLanesPerKey / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (p.cap_mul > 0.0f) dot = tanhf(dot * p.cap_inv) * p.cap_mul;
        s[u] = ok[u] ? dot : -INFINITY;
        s_max = fmaxf(s_max, s[u]);
      }
      const float m_new = fmaxf(m[h], s_max);
      if (m_new == -INFINITY) continue;  // nothing visible yet for this group
      const float corr = exp2f(m[h] - m_new);  // m = -inf: 0
      l[h] *= corr;
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[h][e] *= corr;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const float pu = exp2f(s[u] - m_new);  // masked rows: exp2(-inf) = 0
        l[h] += pu;
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[h][e] += pu * to_f32(vr[u].x[e]);
      }
      m[h] = m_new;
    }
  }

  // Merge the block's slots: weights exp2(m_slot - M) / L per head, then one output per (h, d).
  // acc_s lies over the stages: no copy may still be landing, and no thread still reading them.
  cp_async_wait<0>();
  __syncthreads();
#pragma unroll
  for (int h = 0; h < G; ++h) {
    if (sub == 0) {
      m_s[slot][h] = m[h];
      l_s[slot][h] = l[h];
    }
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc_s[slot][h][sub * kVec + e] = acc[h][e];
  }
  __syncthreads();
  if (threadIdx.x < G) {
    const int h = threadIdx.x;
    float big = -INFINITY;
    for (int s = 0; s < kSlots; ++s) big = fmaxf(big, m_s[s][h]);
    float total = 0.0f;
    for (int s = 0; s < kSlots; ++s) {
      const float w = big == -INFINITY ? 0.0f : exp2f(m_s[s][h] - big);
      m_s[s][h] = w;
      total += w * l_s[s][h];
    }
    head_s[h][0] = big;
    head_s[h][1] = total;
  }
  __syncthreads();
  const bool single = gridDim.x == 1;
  for (int idx = threadIdx.x; idx < p.n_q_heads * D; idx += kDecodeThreads) {
    const int h = idx / D, d = idx % D;
    const float total = head_s[h][1];
    float o = 0.0f;
    for (int s = 0; s < kSlots; ++s) o += m_s[s][h] * acc_s[s][h][d];
    o = total > 0.0f ? o / total : 0.0f;
    const float lse = total > 0.0f ? (head_s[h][0] + log2f(total)) * 0.6931471805599453f : -INFINITY;
    if (single) {
      p.out[head0 * D + idx] = o;
      if (d == 0) p.lse[head0 + h] = lse;
    } else {
      float* part = p.partials + (blockIdx.x * int64_t{p.n_q_heads} * gridDim.y + head0 + h) * (D + 1);
      part[d] = o;
      if (d == 0) part[D] = lse;
    }
  }
}

// One block per head: warp w sums splits w, w + kCombineWarps, ... weighted by exp(lse_s - max);
// lane covers dims lane, lane + 32, ...; the warps' sums meet in shared memory.
template <int D>
__global__ void __launch_bounds__(kCombineWarps * 32)
    decode_combine_kernel(const float* partials, int n_splits, int n_heads, float* out, float* lse) {
  pdl_wait();
  pdl_trigger();
  constexpr int kPerLane = (D + 31) / 32;
  __shared__ float red_s[kCombineWarps];
  __shared__ float o_s[kCombineWarps][D];
  __shared__ float total_s[kCombineWarps];
  const int h = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  auto part = [&](int s) { return partials + (static_cast<int64_t>(s) * n_heads + h) * (D + 1); };

  float big = -INFINITY;
  for (int s = threadIdx.x; s < n_splits; s += kCombineWarps * 32) big = fmaxf(big, part(s)[D]);
  big = warp_max(big);
  if (lane == 0) red_s[warp] = big;
  __syncthreads();
  big = -INFINITY;
  for (int w = 0; w < kCombineWarps; ++w) big = fmaxf(big, red_s[w]);
  if (big == -INFINITY) {  // this head saw no key
    for (int d = threadIdx.x; d < D; d += kCombineWarps * 32) out[h * D + d] = 0.0f;
    if (threadIdx.x == 0) lse[h] = -INFINITY;
    return;
  }

  float o[kPerLane];
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) o[e] = 0.0f;
  float total = 0.0f;
#pragma unroll 8
  for (int s = warp; s < n_splits; s += kCombineWarps) {
    const float* ps = part(s);
    const float w = expf(ps[D] - big);  // an empty split: exp(-inf) = 0
    total += w;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      const int d = lane + 32 * e;
      if (d < D) o[e] += w * ps[d];
    }
  }
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    const int d = lane + 32 * e;
    if (d < D) o_s[warp][d] = o[e];
  }
  if (lane == 0) total_s[warp] = total;
  __syncthreads();
  float sum_w = 0.0f;
  for (int w = 0; w < kCombineWarps; ++w) sum_w += total_s[w];
  for (int d = threadIdx.x; d < D; d += kCombineWarps * 32) {
    float acc = 0.0f;
    for (int w = 0; w < kCombineWarps; ++w) acc += o_s[w][d];
    out[h * D + d] = acc / sum_w;
  }
  if (threadIdx.x == 0) lse[h] = big + logf(sum_w);
}

int64_t max_splits(int sm_count) { return int64_t{kBlocksPerSm} * sm_count; }

// The least keys per split: kMinKeysPerSplit, or HEADINFER_DECODE_MIN_KEYS (a tuning knob for A/B
// runs, bench/decode_ab.sh BASE=none: a multiple of kSplitRound from 64 to 65536; anything else is
// ignored). Read once per process, so every call of a run, and every placement, splits alike.
int64_t min_keys_per_split() {
  static const int64_t keys = [] {
    const char* v = std::getenv("HEADINFER_DECODE_MIN_KEYS");
    if (v == nullptr) return kMinKeysPerSplit;
    char* end = nullptr;
    const long long k = std::strtoll(v, &end, 10);
    const bool ok = end != v && *end == '\0' && k >= 64 && k <= 65536 && k % kSplitRound == 0;
    return ok ? static_cast<int64_t>(k) : kMinKeysPerSplit;
  }();
  return keys;
}

}  // namespace

size_t decode_partials_max_bytes(int sm_count, int64_t max_q_heads, int64_t max_kv_heads, int64_t head_dim) {
  if (max_q_heads <= 0 || head_dim <= 0 || max_q_heads > 8 || max_kv_heads <= 0) return 0;
  return static_cast<size_t>(max_splits(sm_count) * max_q_heads * max_kv_heads * (head_dim + 1)) * sizeof(float);
}

bool attention_decode(const AttentionArgs& a, int sm_count, Scratch& partials, cudaStream_t stream) {
  if (a.q.rows != 1 || a.n_q_heads < 1 || a.n_q_heads > 8 || a.n_kv_heads < 1 || a.n_kv_heads > 65535)
    return false;
  const size_t elem = dtype_size(a.kv.dtype);
  if (reinterpret_cast<uintptr_t>(a.kv.k) % 16 != 0 || reinterpret_cast<uintptr_t>(a.kv.v) % 16 != 0 ||
      (a.kv.row_stride * elem) % 16 != 0 || (a.n_kv_heads > 1 && (a.kv_head_stride * elem) % 16 != 0))
    return false;
  const int64_t q_pos = a.q_pos0;
  DecodeParams p{};
  p.q = static_cast<const float*>(a.q.data);
  p.k = a.kv.k;
  p.v = a.kv.v;
  p.kv_ld = a.kv.row_stride;
  p.kv_head_stride = a.n_kv_heads > 1 ? a.kv_head_stride : 0;
  p.n_q_heads = static_cast<int>(a.n_q_heads);
  p.j1 = std::min(a.n_keys, q_pos - a.k_pos0 + 1);
  p.j0 = a.window > 0 ? std::max<int64_t>(0, q_pos - a.window + 1 - a.k_pos0) : 0;
  p.j1 = std::max(p.j1, p.j0);
  p.scale_log2 = a.scale * 1.4426950408889634f;
  if (a.softcap > 0.0f) {
    p.cap_mul = a.softcap * 1.4426950408889634f;
    p.cap_inv = 1.0f / p.cap_mul;
  }
  p.out = static_cast<float*>(a.out.data);
  p.lse = static_cast<float*>(a.lse.data);
  p.settled = std::clamp<int64_t>(a.settled_keys, 0, a.n_keys);
  const int64_t n = p.j1 - p.j0;
  int64_t n_splits = 1;
  p.keys_per_split = std::max<int64_t>(n, 1);
  const int64_t min_keys = min_keys_per_split();
  if (n > min_keys) {
    // About one wave for a whole layer: the layer's kv heads share the splits. Sized by the layer's
    // heads, never the call's, so a head's splits (and its bits) do not depend on its group.
    const int64_t layer_heads = a.layer_kv_heads > 0 ? a.layer_kv_heads : a.n_kv_heads;
    const int64_t target = std::max<int64_t>(1, max_splits(sm_count) / layer_heads);
    const int64_t per = std::max(min_keys, (n + target - 1) / target);
    p.keys_per_split = (per + kSplitRound - 1) / kSplitRound * kSplitRound;
    n_splits = (n + p.keys_per_split - 1) / p.keys_per_split;
  }
  int device = 0, smem_optin = 0;
  HEADINFER_CUDA_CHECK(cudaGetDevice(&device));
  HEADINFER_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  bool launched = false;
  dispatch_head_dim(a.head_dim, [&](auto dtag) {
    constexpr int D = decltype(dtag)::value;
    dispatch_dtype(a.kv.dtype, [&](auto ktag) {
      using KV = typename decltype(ktag)::type;
      constexpr int kVec = KvVec<KV>::kN;
      constexpr int kLanes = D / kVec;
      // A key row must split into a power-of-two number of 16-byte vectors, at most one per lane.
      if constexpr (D % kVec == 0 && kLanes >= 1 && kLanes <= 32 && (kLanes & (kLanes - 1)) == 0) {
        // The stages must fit the card's shared memory (96 KB at most: every sm_80+ card has it);
        // a card without it takes the CUDA-core kernel. Depends on the shape alone, like the rest.
        if (decode_smem_bytes<KV, D, 1>() + 1024 > static_cast<size_t>(smem_optin)) return;
        if (n_splits > 1)
          p.partials = static_cast<float*>(
              partials.get(static_cast<size_t>(n_splits * a.n_q_heads * a.n_kv_heads * (D + 1)) * sizeof(float)));
        const dim3 grid(static_cast<unsigned>(n_splits), static_cast<unsigned>(a.n_kv_heads));
        auto launch = [&](auto gtag) {
          constexpr int G = decltype(gtag)::value;
          constexpr size_t smem = decode_smem_bytes<KV, D, G>();
          // Past 48 KB of shared memory (dynamic + static) a kernel must ask for it: a host-side
          // attribute of the kernel, set once per device (no stream work).
          static std::atomic<uint64_t> opted_in{0};  // bit d: set on device d (< 64)
          const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
          if (bit == 0 || (opted_in.load() & bit) == 0) {
            HEADINFER_CUDA_CHECK(cudaFuncSetAttribute(decode_kernel<KV, D, G>,
                                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                      static_cast<int>(smem)));
            opted_in.fetch_or(bit);
          }
          launch_pdl(decode_kernel<KV, D, G>, grid, kDecodeThreads, smem, stream, p);
        };
        if (a.n_q_heads == 1) launch(HeadDimTag<1>{});
        else if (a.n_q_heads == 2) launch(HeadDimTag<2>{});
        else if (a.n_q_heads <= 4) launch(HeadDimTag<4>{});
        else launch(HeadDimTag<8>{});
        HEADINFER_CUDA_CHECK_LAUNCH();
        if (n_splits > 1) {
          const int n_heads = static_cast<int>(a.n_q_heads * a.n_kv_heads);
          launch_pdl(decode_combine_kernel<D>, static_cast<unsigned>(n_heads), kCombineWarps * 32, 0, stream,
                     p.partials, static_cast<int>(n_splits), n_heads, p.out, p.lse);
          HEADINFER_CUDA_CHECK_LAUNCH();
        }
        launched = true;
      }
    });
  });
  return launched;
}

}  // namespace headinfer::cuda
