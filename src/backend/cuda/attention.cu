// Attention of a chunk of queries against a contiguous run of one kv head's keys, returning the
// output and the natural log-sum-exp. CudaOps::attention picks one of three paths per call:
//   - one query row (decode): attention_decode.cu's split-KV kernel, which reads K and V once for
//     all GQA heads;
//   - a chunk of queries against 16-bit KV: cuDNN's fused SDPA on the tensor cores
//     (attention_cudnn.cpp), when this build has cuDNN and it can express the call's mask;
//   - everything else, f32 KV above all (f32 checkpoints keep fp32 attention so their greedy ids
//     match the CPU reference), and soft-capped chunks cuDNN has no engine for: the fp32 CUDA-core
//     kernel below. (cuDNN takes gemma2's softcap as a score modifier, the decode kernel in base 2.)
//
// The CUDA-core kernel: one warp per task (query row t, q head h); the WARPS warps of a block are
// adjacent tasks, which share the kv head, so each 32-key tile of K and V is staged once in shared
// memory (widened to fp32) and read by every warp. Within a tile lane j scores key j; the online
// softmax rescales the running output, which each lane keeps for dims lane, lane + 32, ... in
// registers. When there are too few tasks to fill the GPU, grid.y splits the keys; each split
// writes (out, lse) partials and a combine kernel merges them exactly as attention_merge does.
#include <algorithm>
#include <cmath>

#include "attention_cudnn.h"
#include "attention_internal.h"
#include "cuda_common.h"
#include "cuda_ops.h"
#include "headinfer/env_switch.h"

namespace headinfer::cuda {
namespace {

constexpr int kWarps = 4;       // tasks per block
constexpr int kTile = 32;       // keys per shared-memory tile: one per lane
constexpr int64_t kMinKeysPerSplit = 512;  // enough tiles per split to hide the combine

struct AttnParams {
  const float* q;     // F32 [n_queries, n_q_heads * D], rows q_ld apart
  int64_t q_ld;
  const void* k;      // KV dtype [n_keys, D], rows kv_ld apart
  const void* v;
  int64_t kv_ld;
  int64_t n_queries, n_q_heads, n_keys;
  int64_t q_pos0, k_pos0, window;
  float scale;
  float softcap;      // > 0: s := tanh(s / softcap) * softcap after scaling
  float* out;         // F32 [n_queries, n_q_heads * D], rows out_ld apart (n_splits == 1)
  int64_t out_ld;
  float* lse;         // F32 [n_queries, n_q_heads], rows lse_ld apart (n_splits == 1)
  int64_t lse_ld;
  float* partials;    // F32 [n_splits, n_tasks, D + 1]: out then lse (n_splits > 1)
  int64_t keys_per_split;
};

// Keys of this part visible to query row t: the contiguous run [j0, j1).
__device__ __forceinline__ void visible_keys(const AttnParams& p, int64_t t, int64_t* j0, int64_t* j1) {
  const int64_t q_pos = p.q_pos0 + t;
  *j1 = min(p.n_keys, q_pos - p.k_pos0 + 1);
  *j0 = p.window > 0 ? max(int64_t{0}, q_pos - p.window + 1 - p.k_pos0) : 0;
}

template <typename KV, int D>
__global__ void __launch_bounds__(kWarps * 32) attention_kernel(AttnParams p) {
  constexpr int kPerLane = (D + 31) / 32;
  constexpr int kKStride = D + 1;  // pad: lane j reads row j, column d: conflict-free banks
  extern __shared__ float smem[];
  float* q_s = smem;                        // [kWarps][D]
  float* k_s = q_s + kWarps * D;            // [kTile][D + 1]
  float* v_s = k_s + kTile * kKStride;      // [kTile][D]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n_tasks = p.n_queries * p.n_q_heads;
  const int64_t task0 = blockIdx.x * int64_t{kWarps};
  const int64_t task = task0 + warp;
  const bool active = task < n_tasks;
  const int64_t t = active ? task / p.n_q_heads : 0, h = active ? task % p.n_q_heads : 0;

  // This split's keys, then the block's range: tasks are ordered by query row, and both ends
  // of the visible run grow with the row, so the first and last task bound the block.
  const int64_t split_lo = blockIdx.y * p.keys_per_split;
  const int64_t split_hi = min(p.n_keys, split_lo + p.keys_per_split);
  int64_t b_lo, unused, b_hi;
  visible_keys(p, task0 / p.n_q_heads, &b_lo, &unused);
  visible_keys(p, (min(task0 + kWarps, n_tasks) - 1) / p.n_q_heads, &unused, &b_hi);
  b_lo = max(b_lo, split_lo);
  b_hi = min(b_hi, split_hi);
  int64_t w_lo = 0, w_hi = 0;
  if (active) {
    visible_keys(p, t, &w_lo, &w_hi);
    w_lo = max(w_lo, split_lo);
    w_hi = min(w_hi, split_hi);
  }

  for (int d = lane; d < D; d += 32) q_s[warp * D + d] = active ? p.q[t * p.q_ld + h * D + d] : 0.0f;

  float acc[kPerLane];
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) acc[e] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  const KV* kg = static_cast<const KV*>(p.k);
  const KV* vg = static_cast<const KV*>(p.v);

  for (int64_t tile0 = b_lo; tile0 < b_hi; tile0 += kTile) {
    __syncthreads();  // previous tile fully consumed (and q_s written, on the first pass)
    for (int idx = threadIdx.x; idx < kTile * D; idx += kWarps * 32) {
      const int j = idx / D, d = idx % D;
      const int64_t key = tile0 + j;
      // Rows past the range are zero, never garbage: p = 0 times NaN would still be NaN.
      const bool in = key < b_hi;
      k_s[j * kKStride + d] = in ? to_f32(kg[key * p.kv_ld + d]) : 0.0f;
      v_s[j * D + d] = in ? to_f32(vg[key * p.kv_ld + d]) : 0.0f;
    }
    __syncthreads();
    if (!active || tile0 + kTile <= w_lo || tile0 >= w_hi) continue;
    const int64_t key = tile0 + lane;
    const bool visible = key >= w_lo && key < w_hi;
    float s = -INFINITY;
    if (visible) {
      float dot = 0.0f;
#pragma unroll 8
      for (int d = 0; d < D; ++d) dot += q_s[warp * D + d] * k_s[lane * kKStride + d];
      s = dot * p.scale;
      if (p.softcap > 0.0f) s = __fmul_rn(tanhf(__fdiv_rn(s, p.softcap)), p.softcap);  // as the CPU reference
    }
    const float m_new = fmaxf(m, warp_max(s));
    const float corr = expf(m - m_new);  // m = -inf on the first visible tile: corr = 0
    const float pj = visible ? expf(s - m_new) : 0.0f;
    l = l * corr + warp_sum(pj);
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) acc[e] *= corr;
#pragma unroll 4
    for (int j = 0; j < kTile; ++j) {
      const float pb = __shfl_sync(0xffffffffu, pj, j);
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) {
        const int d = lane + 32 * e;
        if (d < D) acc[e] += pb * v_s[j * D + d];
      }
    }
    m = m_new;
  }
  if (!active) return;

  const bool empty = l == 0.0f;
  const float inv = empty ? 0.0f : 1.0f / l;
  const float lse = empty ? -INFINITY : m + logf(l);
  float* o;
  float* lse_dst;
  if (gridDim.y == 1) {
    o = p.out + t * p.out_ld + h * D;
    lse_dst = p.lse + t * p.lse_ld + h;
  } else {
    o = p.partials + (blockIdx.y * n_tasks + task) * (D + 1);
    lse_dst = o + D;
  }
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    const int d = lane + 32 * e;
    if (d < D) o[d] = acc[e] * inv;
  }
  if (lane == 0) *lse_dst = lse;
}

constexpr int kMaxSplits = 256;

// One block of max(D, 32) threads per task: the split weights exp(lse_s - max) are computed once into
// shared memory, then thread d sums its dimension over the splits (independent loads, in flight
// together), merging exactly as attention_merge does.
template <int D>
__global__ void combine_splits_kernel(AttnParams p, int n_splits) {
  __shared__ float weight_s[kMaxSplits];
  __shared__ float stats_s[2];  // max lse, sum of weights
  const int64_t n_tasks = p.n_queries * p.n_q_heads;
  const int64_t task = blockIdx.x;
  const int64_t t = task / p.n_q_heads, h = task % p.n_q_heads;
  auto part = [&](int s) { return p.partials + (s * n_tasks + task) * (D + 1); };
  if (threadIdx.x < 32) {
    float m = -INFINITY;
    for (int s = threadIdx.x; s < n_splits; s += 32) m = fmaxf(m, part(s)[D]);
    m = warp_max(m);
    float total = 0.0f;
    for (int s = threadIdx.x; s < n_splits; s += 32) {
      const float w = m == -INFINITY ? 0.0f : expf(part(s)[D] - m);
      weight_s[s] = w;
      total += w;
    }
    total = warp_sum(total);
    if (threadIdx.x == 0) {
      stats_s[0] = m;
      stats_s[1] = total;
    }
  }
  __syncthreads();
  const float m = stats_s[0], total = stats_s[1];
  float* o = p.out + t * p.out_ld + h * D;
  const int d = threadIdx.x;
  if (d >= D) return;  // blocks have at least a warp's 32 threads, for the reductions above
  if (m == -INFINITY) {
    o[d] = 0.0f;
    if (d == 0) p.lse[t * p.lse_ld + h] = -INFINITY;
    return;
  }
  float sum = 0.0f;
  for (int s = 0; s < n_splits; ++s) sum += weight_s[s] * part(s)[d];
  o[d] = sum * (1.0f / total);
  if (d == 0) p.lse[t * p.lse_ld + h] = m + logf(total);
}

}  // namespace

// The attention scratch any call with at most `max_tasks` (query row, q head) tasks can need: the
// CUDA-core kernel splits only when blocks = ceil(tasks / kWarps) < sm_count, into at most
// ceil(2 sm_count / blocks) splits, so splits * blocks <= 2 sm_count + blocks; the decode kernel's
// partials (attention_decode.cu); cuDNN's 16-bit Q, O and its Stats.
size_t attention_partials_max_bytes(int sm_count, int64_t max_tasks, int64_t max_kv_heads, int64_t head_dim) {
  if (max_tasks <= 0 || head_dim <= 0 || max_kv_heads <= 0) return 0;
  const int64_t blocks = std::min<int64_t>((max_tasks + kWarps - 1) / kWarps, sm_count);
  const size_t tiles = static_cast<size_t>((2 * int64_t{sm_count} + blocks) * kWarps * (head_dim + 1)) * sizeof(float);
  const size_t decode = decode_partials_max_bytes(sm_count, std::min<int64_t>(max_tasks, 8), max_kv_heads, head_dim);
  const size_t sdpa = CudnnSdpa::available() ? CudnnSdpa::scratch_bytes(max_tasks * max_kv_heads, head_dim) : 0;
  return std::max({tiles, decode, sdpa});
}

namespace {
// HEADINFER_O_DIRECT (env_switch; off unless set to 1 until a card has measured it):
// attention_out16() says yes for cuDNN-sized chunks, so the model hands attention a 16-bit output
// and cuDNN writes its O there, which o_proj reads as it is (no F32 pass and no cast; the same bits
// where cuDNN runs the same engine for both layouts of O, since bf16 -> F32 -> bf16 is exact).
const bool kODirect = env_switch("HEADINFER_O_DIRECT", false);
}  // namespace

bool CudaOps::attention_out16(int64_t n_queries) const {
  return kODirect && CudnnSdpa::available() && n_queries >= kCudnnMinQueries;
}

void CudaOps::attention(const AttentionArgs& a) {
  if (a.q.dtype != DType::F32 || a.out.dtype != DType::F32 || a.lse.dtype != DType::F32)
    throw Error("cuda backend: attention needs F32 queries, output and lse");
  if (a.n_kv_heads < 1 || a.q.cols < a.n_kv_heads * a.n_q_heads * a.head_dim || a.out.rows != a.q.rows ||
      a.lse.rows != a.q.rows || a.lse.cols < a.n_kv_heads * a.n_q_heads)
    throw Error("cuda backend: attention shape mismatch");
  const bool has16 = a.out16.data != nullptr;
  if (has16 && (a.out16.dtype == DType::F32 || a.out16.rows != a.out.rows || a.out16.cols != a.out.cols))
    throw Error("cuda backend: attention's 16-bit output must be a 16-bit view of out's shape");
  if (a.q.rows * a.n_q_heads == 0) return;
  // The F32 paths, then out rounded into out16 where one was asked for (what the cast before
  // o_proj would have made of it).
  auto finish16 = [&] {
    if (has16) copy(a.out, a.out16);
  };
  // The decode kernel and cuDNN take all the kv heads in one launch; whether they accept a call
  // depends only on things every head shares, so grouping never changes which path a head takes.
  if (attention_decode(a, sm_count_, attn_partials_, stream_)) return finish16();
  // cuDNN tiles queries by 64 or more rows and does not split keys: a few rows against a long
  // context would leave most SMs idle, so short chunks stay on the split-KV CUDA-core kernel.
  // Soft-capped calls (gemma2) go to cuDNN too, with the cap as a score modifier; where cuDNN has no
  // engine for that graph, run() declines for the shape and the CUDA-core kernel takes it.
  if (a.q.rows >= kCudnnMinQueries) {
    bool wrote16 = false;
    if (cudnn_.run(a, attn_partials_, &wrote16)) {
      if (!wrote16) finish16();
      return;
    }
    if (has16) {  // no engine for the graph that writes out16: the packed one, then the rounding
      AttentionArgs f = a;
      f.out16 = MatView{};
      if (cudnn_.run(f, attn_partials_)) return finish16();
    }
  }
  for (int64_t i = 0; i < a.n_kv_heads; ++i) attention_core(a.head(i));
  finish16();
}

void CudaOps::prepare_attention(const AttentionArgs& a) {
  // The paths of attention() above: a one-row call is the decode kernel's (nothing to plan).
  if (a.q.rows * a.n_q_heads == 0 || a.q.rows == 1 || a.q.rows < kCudnnMinQueries) return;
  cudnn_.prepare(a);
  // With 16-bit outputs on (attention_out16), the graph that writes O into the model's [rows, cols]
  // output of the same row stride as out too.
  if (attention_out16(a.q.rows) && a.out16.data == nullptr && a.kv.dtype != DType::F32) {
    AttentionArgs b = a;
    b.out16 = MatView{nullptr, a.kv.dtype, a.out.rows, a.out.cols, a.out.row_stride};
    cudnn_.prepare(b);
  }
}

void CudaOps::attention_core(const AttentionArgs& a) {
  const int64_t n_tasks = a.q.rows * a.n_q_heads;
  AttnParams p{static_cast<const float*>(a.q.data), a.q.row_stride, a.kv.k, a.kv.v, a.kv.row_stride,
               a.q.rows, a.n_q_heads, a.n_keys, a.q_pos0, a.k_pos0, a.window, a.scale, a.softcap,
               static_cast<float*>(a.out.data), a.out.row_stride, static_cast<float*>(a.lse.data),
               a.lse.row_stride, nullptr, std::max<int64_t>(a.n_keys, 1)};
  const int64_t blocks = (n_tasks + kWarps - 1) / kWarps;
  // Split the keys only when the tasks alone leave most multiprocessors idle (decode).
  int64_t n_splits = 1;
  if (blocks < sm_count_ && a.n_keys >= 2 * kMinKeysPerSplit) {
    n_splits = std::min<int64_t>({(2 * sm_count_ + blocks - 1) / blocks, a.n_keys / kMinKeysPerSplit, kMaxSplits});
    p.keys_per_split = (a.n_keys + n_splits - 1) / n_splits;
    n_splits = (a.n_keys + p.keys_per_split - 1) / p.keys_per_split;
  }
  dispatch_head_dim(a.head_dim, [&](auto dtag) {
    constexpr int D = decltype(dtag)::value;
    if (n_splits > 1)
      p.partials = static_cast<float*>(
          attn_partials_.get(static_cast<size_t>(n_splits * n_tasks * (D + 1)) * sizeof(float)));
    const size_t smem = sizeof(float) * (kWarps * D + kTile * (D + 1) + kTile * D);
    dispatch_dtype(a.kv.dtype, [&](auto ktag) {
      using KV = typename decltype(ktag)::type;
      if (smem > 48 * 1024)
        HEADINFER_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<KV, D>,
                                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                  static_cast<int>(smem)));
      attention_kernel<KV, D><<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(n_splits)), kWarps * 32,
                                smem, stream_>>>(p);
    });
    HEADINFER_CUDA_CHECK_LAUNCH();
    if (n_splits > 1) {
      combine_splits_kernel<D><<<static_cast<unsigned>(n_tasks), std::max(D, 32), 0, stream_>>>(
          p, static_cast<int>(n_splits));
      HEADINFER_CUDA_CHECK_LAUNCH();
    }
  });
}

}  // namespace headinfer::cuda
