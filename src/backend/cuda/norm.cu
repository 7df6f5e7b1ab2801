// RMSNorm, per row: out = x / sqrt(mean(x^2) + eps) * weight. One warp per row: rows are a
// hidden state (thousands of columns) or one head for q/k norm (tens), and a warp serves both.
#include "cuda_common.h"
#include "cuda_ops.h"

namespace headinfer::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

template <typename W>
__global__ void rms_norm_kernel(const float* x, int64_t x_stride, const W* weight, float eps, float* out,
                                int64_t out_stride, int64_t rows, int64_t cols) {
  const int64_t r = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float* xr = x + r * x_stride;
  float sum_sq = 0.0f;
  for (int64_t i = lane; i < cols; i += 32) sum_sq += xr[i] * xr[i];
  sum_sq = warp_sum(sum_sq);
  // Same expression as the CPU reference: 1 / sqrt(mean + eps), then w * (x * inv).
  const float inv = 1.0f / sqrtf(sum_sq / static_cast<float>(cols) + eps);
  float* o = out + r * out_stride;
  // x and out may alias: each lane rewrites only the elements it has read itself.
  for (int64_t i = lane; i < cols; i += 32) o[i] = to_f32(weight[i]) * (xr[i] * inv);
}

// Wide rows (the hidden size): one block per row, so a decode step's single row is read by 1024
// threads at once (a few loads each, all in flight) instead of one warp's 128 dependent passes.
// Each thread sums a strided part, the warps reduce, and every thread adds the warps' sums in the
// same order.
constexpr int kWideThreads = 1024;
constexpr int kWideUnroll = 4;
constexpr int64_t kWideCols = 512;  // rows wider than this take the block kernel (a shape rule)

template <typename W>
__global__ void __launch_bounds__(kWideThreads) rms_norm_wide_kernel(const float* x, int64_t x_stride,
                                                                     const W* weight, float eps, float* out,
                                                                     int64_t out_stride, int64_t cols) {
  __shared__ float part_s[kWideThreads / 32];
  const int64_t r = blockIdx.x;
  const float* xr = x + r * x_stride;
  float sum_sq = 0.0f;
  for (int64_t i0 = threadIdx.x; i0 < cols; i0 += kWideThreads * kWideUnroll) {
    float v[kWideUnroll];
#pragma unroll
    for (int u = 0; u < kWideUnroll; ++u) {
      const int64_t i = i0 + int64_t{u} * kWideThreads;
      v[u] = i < cols ? xr[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kWideUnroll; ++u) sum_sq += v[u] * v[u];
  }
  sum_sq = warp_sum(sum_sq);
  if (threadIdx.x % 32 == 0) part_s[threadIdx.x / 32] = sum_sq;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kWideThreads / 32; ++w) total += part_s[w];
  const float inv = 1.0f / sqrtf(total / static_cast<float>(cols) + eps);
  float* o = out + r * out_stride;
  // x and out may alias: each thread rewrites only the elements it has read itself.
  for (int64_t i = threadIdx.x; i < cols; i += kWideThreads) o[i] = to_f32(weight[i]) * (xr[i] * inv);
}

}  // namespace

void CudaOps::rms_norm(const MatView& x, const VecView& weight, float eps, const MatView& out) {
  if (x.dtype != DType::F32 || out.dtype != DType::F32) throw Error("cuda backend: rms_norm needs F32 activations");
  if (weight.n != x.cols || out.rows != x.rows || out.cols != x.cols)
    throw Error("cuda backend: rms_norm shape mismatch");
  if (x.rows == 0) return;
  dispatch_dtype(weight.dtype, [&](auto tag) {
    using W = typename decltype(tag)::type;
    if (x.cols > kWideCols) {
      if (x.rows > 0x7fffffff) throw Error("cuda backend: rms_norm of too many rows");
      rms_norm_wide_kernel<W><<<static_cast<unsigned>(x.rows), kWideThreads, 0, stream_>>>(
          static_cast<const float*>(x.data), x.row_stride, static_cast<const W*>(weight.data), eps,
          static_cast<float*>(out.data), out.row_stride, x.cols);
      return;
    }
    rms_norm_kernel<W><<<grid_1d(x.rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream_>>>(
        static_cast<const float*>(x.data), x.row_stride, static_cast<const W*>(weight.data), eps,
        static_cast<float*>(out.data), out.row_stride, x.rows, x.cols);
  });
  HEADINFER_CUDA_CHECK_LAUNCH();
}

}  // namespace headinfer::cuda
