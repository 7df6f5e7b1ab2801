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

// Rotates (v[i], v[i + half]) of one head's vector v at position pos; dims past rotary_dim (phi3's
// partial rotary) stay as they are. Both kernels below rotate through it, so they agree bit for bit.
__device__ __forceinline__ void rotate_pair(float* v, int64_t i, const RopeArgs& a, int64_t pos) {
  const float angle = __fmul_rn(a.inv_freq[i], static_cast<float>(pos));  // no FMA contraction
  const float c = cosf(angle) * a.attention_factor;
  const float s = sinf(angle) * a.attention_factor;
  const float x1 = v[i], x2 = v[a.half + i];
  v[i] = x1 * c - x2 * s;
  v[a.half + i] = x2 * c + x1 * s;
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
  rotate_pair(x + t * x_stride + h * a.head_dim, i, a, a.pos0 + t);
}

// rope_kernel over q's heads and k's heads of each row in one launch: head h < nq of row t is q's,
// the others k's.
__global__ void rope_qk_kernel(float* q, int64_t q_stride, int64_t nq, float* k, int64_t k_stride, int64_t nk,
                               RopeArgs a) {
  pdl_wait();
  pdl_trigger();
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t heads = nq + nk;
  if (idx >= a.rows * heads * a.half) return;
  const int64_t i = idx % a.half;
  const int64_t h = (idx / a.half) % heads;
  const int64_t t = idx / (a.half * heads);
  float* v = h < nq ? q + t * q_stride + h * a.head_dim : k + t * k_stride + (h - nq) * a.head_dim;
  rotate_pair(v, i, a, a.pos0 + t);
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
  const int64_t n = a.rows * (n_q_heads + n_kv_heads) * a.half;
  if (n == 0) return;
  launch_pdl(rope_qk_kernel, grid_1d(n, kThreads), kThreads, 0, stream_, static_cast<float*>(q.data), q.row_stride,
             n_q_heads, static_cast<float*>(k.data), k.row_stride, n_kv_heads, a);
  HEADINFER_CUDA_CHECK_LAUNCH();
}

}  // namespace headinfer::cuda
