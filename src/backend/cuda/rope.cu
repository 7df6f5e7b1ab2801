// RoPE, rotate-half convention, in place. The angle is the fp32 product inv_freq[i] * pos, as
// transformers computes it; cos/sin use the accurate cosf/sinf (angles reach 1e5 rad at long
// context, where the fast intrinsics lose all precision).
#include "cuda_common.h"
#include "cuda_ops.h"

namespace headinfer::cuda {
namespace {

constexpr int kThreads = 128;

// One thread per (row, head, pair i): rotates (v[i], v[i + half]), half = rotary_dim / 2; dims past
// rotary_dim (phi3's partial rotary) stay as they are.
__global__ void rope_kernel(float* x, int64_t x_stride, int64_t rows, int64_t n_heads, int64_t head_dim,
                            int64_t rotary_dim, const float* inv_freq, float attention_factor, int64_t pos0) {
  const int64_t half = rotary_dim / 2;
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= rows * n_heads * half) return;
  const int64_t i = idx % half;
  const int64_t h = (idx / half) % n_heads;
  const int64_t t = idx / (half * n_heads);
  const float angle = __fmul_rn(inv_freq[i], static_cast<float>(pos0 + t));  // no FMA contraction
  const float c = cosf(angle) * attention_factor;
  const float s = sinf(angle) * attention_factor;
  float* v = x + t * x_stride + h * head_dim;
  const float x1 = v[i], x2 = v[half + i];
  v[i] = x1 * c - x2 * s;
  v[half + i] = x2 * c + x1 * s;
}

}  // namespace

void CudaOps::rope(const MatView& x, int64_t n_heads, const RopeTable& rope, int64_t pos0) {
  if (x.dtype != DType::F32) throw Error("cuda backend: rope needs F32 activations");
  const int64_t rotary = rope.rotary();
  if (rotary % 2 != 0 || rotary > rope.head_dim || n_heads * rope.head_dim > x.cols)
    throw Error("cuda backend: rope shape mismatch");
  const int64_t n = x.rows * n_heads * (rotary / 2);
  if (n == 0) return;
  rope_kernel<<<grid_1d(n, kThreads), kThreads, 0, stream_>>>(static_cast<float*>(x.data), x.row_stride, x.rows,
                                                               n_heads, rope.head_dim, rotary, rope.inv_freq,
                                                               rope.attention_factor, pos0);
  HEADINFER_CUDA_CHECK_LAUNCH();
}

}  // namespace headinfer::cuda
