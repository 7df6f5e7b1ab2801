// Merge of two attention parts of the same queries: (out_a, lse_a) := the softmax-weighted union
// of a and b, exactly as the CPU reference (an empty part has lse = -inf and is skipped).
#include "cuda_common.h"
#include "cuda_ops.h"

namespace headinfer::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

// One warp per (query row, head).
__global__ void merge_kernel(float* out_a, int64_t out_a_stride, float* lse_a, int64_t lse_a_stride,
                             const float* out_b, int64_t out_b_stride, const float* lse_b, int64_t lse_b_stride,
                             int64_t rows, int64_t n_heads, int64_t head_dim) {
  pdl_wait();
  pdl_trigger();
  const int64_t task = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (task >= rows * n_heads) return;
  const int64_t t = task / n_heads, h = task % n_heads;
  float* la = lse_a + t * lse_a_stride + h;
  const float lb = lse_b[t * lse_b_stride + h];
  const float la_v = *la;
  float* oa = out_a + t * out_a_stride + h * head_dim;
  const float* ob = out_b + t * out_b_stride + h * head_dim;
  if (isinf(lb) && lb < 0) return;
  if (isinf(la_v) && la_v < 0) {
    for (int64_t i = lane; i < head_dim; i += 32) oa[i] = ob[i];
    __syncwarp();
    if (lane == 0) *la = lb;
    return;
  }
  const float m = fmaxf(la_v, lb);
  const float wa = expf(la_v - m), wb = expf(lb - m);
  const float inv = 1.0f / (wa + wb);
  for (int64_t i = lane; i < head_dim; i += 32) oa[i] = (wa * oa[i] + wb * ob[i]) * inv;
  __syncwarp();  // every lane has read la_v before lane 0 overwrites it
  if (lane == 0) *la = m + logf(wa + wb);
}

}  // namespace

void CudaOps::attention_merge(const MatView& out_a, const MatView& lse_a, const MatView& out_b, const MatView& lse_b,
                              int64_t head_dim) {
  const int64_t n_heads = lse_a.cols;
  if (out_a.rows != out_b.rows || lse_a.rows != out_a.rows || lse_b.cols != n_heads ||
      out_a.cols < n_heads * head_dim)
    throw Error("cuda backend: attention_merge shape mismatch");
  const int64_t n = out_a.rows * n_heads;
  if (n == 0) return;
  launch_pdl(merge_kernel, grid_1d(n, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream_, static_cast<float*>(out_a.data),
             out_a.row_stride, static_cast<float*>(lse_a.data), lse_a.row_stride, static_cast<const float*>(out_b.data),
             out_b.row_stride, static_cast<const float*>(lse_b.data), lse_b.row_stride, out_a.rows, n_heads, head_dim);
  HEADINFER_CUDA_CHECK_LAUNCH();
}

}  // namespace headinfer::cuda
