// RoPE, rotate-half convention, in place. The angle is the fp32 product inv_freq[i] * pos, as
// transformers computes it; cos/sin use the accurate cosf/sinf (angles reach 1e5 rad at long
// context, where the fast intrinsics lose all precision).
#include "cuda_common.h"
#include "cuda_ops.h"

namespace headinfer::cuda {
namespace {

constexpr int kThreads = 128;

struct RopeArgs {
  int64_t rows, head_dim, half;  // half = rotary_dim / 2
  const float* inv_freq;
  float attention_factor;
  int64_t pos0;
};

// The cos and sin of pair i at position pos, times the attention factor.
__device__ __forceinline__ void rope_cos_sin(int64_t i, const RopeArgs& a, int64_t pos, float& c, float& s) {
  const float angle = __fmul_rn(a.inv_freq[i], static_cast<float>(pos));  // no FMA contraction
  c = cosf(angle) * a.attention_factor;
  s = sinf(angle) * a.attention_factor;
}

// (x1, x2) = (v[i], v[i + half]) of one head, rotated by (c, s). Dims past rotary_dim (phi3's
// partial rotary) stay as they are. Both kernels below rotate through it, so they agree bit for bit
// (RopeQkEqualsTwoRopes checks it on the card).
__device__ __forceinline__ void rotated(float x1, float x2, float c, float s, float& y1, float& y2) {
  y1 = x1 * c - x2 * s;
  y2 = x2 * c + x1 * s;
}

// One thread per (row, head, pair i).
__global__ void rope_kernel(float* x, int64_t x_stride, int64_t n_heads, RopeArgs a) {
  pdl_wait();
  pdl_trigger();
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= a.rows * n_heads * a.half) return;
  const int64_t i = idx % a.half;
  const int64_t h = (idx / a.half) % n_heads;
  const int64_t t = idx / (a.half * n_heads);
  float c, s;
  rope_cos_sin(i, a, a.pos0 + t, c, s);
  float* v = x + t * x_stride + h * a.head_dim;
  rotated(v[i], v[a.half + i], c, s, v[i], v[a.half + i]);
}

// rope over q's heads and k's heads of each row in one launch: head h < nq of row t is q's, the
// others k's. A thread takes pair i of GROUP consecutive heads of one row, so their cos and sin are
// computed once: prefill's rows take 8 heads a thread (the trigonometry was most of this pass), a
// decode step's one row one head a thread, as before the grouping (an 8K decode step was 0.02 ms
// slower with 8, H100).
template <int GROUP>
__global__ void rope_qk_kernel(float* q, int64_t q_stride, int64_t nq, float* k, int64_t k_stride, int64_t nk,
                               RopeArgs a) {
  pdl_wait();
  pdl_trigger();
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t heads = nq + nk;
  const int64_t groups = (heads + GROUP - 1) / GROUP;
  if (idx >= a.rows * groups * a.half) return;
  const int64_t i = idx % a.half;
  const int64_t g = (idx / a.half) % groups;
  const int64_t t = idx / (a.half * groups);
  float c, s;
  rope_cos_sin(i, a, a.pos0 + t, c, s);
  float* v[GROUP];
  float x1[GROUP], x2[GROUP];
#pragma unroll
  for (int j = 0; j < GROUP; ++j) {  // every load first: the group's reads are in flight together
    const int64_t h = g * GROUP + j;
    v[j] = nullptr;
    if (h >= heads) continue;
    v[j] = h < nq ? q + t * q_stride + h * a.head_dim : k + t * k_stride + (h - nq) * a.head_dim;
    x1[j] = v[j][i];
    x2[j] = v[j][a.half + i];
  }
#pragma unroll
  for (int j = 0; j < GROUP; ++j)
    if (v[j] != nullptr) rotated(x1[j], x2[j], c, s, v[j][i], v[j][a.half + i]);
}

RopeArgs rope_args(const MatView& x, int64_t n_heads, const RopeTable& rope, int64_t pos0) {
  if (x.dtype != DType::F32) throw Error("cuda backend: rope needs F32 activations");
  const int64_t rotary = rope.rotary();
  if (rotary % 2 != 0 || rotary > rope.head_dim || n_heads * rope.head_dim > x.cols)
    throw Error("cuda backend: rope shape mismatch");
  return RopeArgs{x.rows, rope.head_dim, rotary / 2, rope.inv_freq, rope.attention_factor, pos0};
}

}  // namespace

void CudaOps::rope(const MatView& x, int64_t n_heads, const RopeTable& rope, int64_t pos0) {
  const RopeArgs a = rope_args(x, n_heads, rope, pos0);
  const int64_t n = a.rows * n_heads * a.half;
  if (n == 0) return;
  launch_pdl(rope_kernel, grid_1d(n, kThreads), kThreads, 0, stream_, static_cast<float*>(x.data), x.row_stride,
             n_heads, a);
  HEADINFER_CUDA_CHECK_LAUNCH();
}

void CudaOps::rope_qk(const MatView& q, int64_t n_q_heads, const MatView& k, int64_t n_kv_heads,
                      const RopeTable& table, int64_t pos0) {
  const RopeArgs a = rope_args(q, n_q_heads, table, pos0);
  rope_args(k, n_kv_heads, table, pos0);  // k's checks
  if (k.rows != q.rows) throw Error("cuda backend: rope_qk of q and k with different rows");
  constexpr int kGroup = 8;
  const int group = a.rows > 1 ? kGroup : 1;
  const int64_t n = a.rows * ((n_q_heads + n_kv_heads + group - 1) / group) * a.half;
  if (n == 0) return;
  launch_pdl(group == 1 ? rope_qk_kernel<1> : rope_qk_kernel<kGroup>, grid_1d(n, kThreads), kThreads, 0, stream_,
             static_cast<float*>(q.data), q.row_stride, n_q_heads, static_cast<float*>(k.data), k.row_stride, n_kv_heads,
             a);
  HEADINFER_CUDA_CHECK_LAUNCH();
}

}  // namespace headinfer::cuda
