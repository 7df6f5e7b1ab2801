// RMSNorm, per row: out = x / sqrt(mean(x^2) + eps) * weight, and the same after a residual add
// (add_rms_norm: x += y first, in the same pass). One warp per row for narrow rows (one head for
// q/k norm), one block per row for the hidden size. out is F32 or the 16-bit dtype the next
// linear reads (each element rounded from the F32 value). The fused and plain kernels sum in the
// same order, so add_rms_norm gives what add() then rms_norm() give, bit for bit.
#include "cuda_common.h"
#include "cuda_ops.h"

namespace headinfer::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

// ADD: x[r] += y[r] first (y may be nullptr otherwise).
template <typename W, typename O, bool ADD>
__global__ void rms_norm_kernel(float* x, int64_t x_stride, const float* y, int64_t y_stride, const W* weight,
                                float eps, O* out, int64_t out_stride, int64_t rows, int64_t cols) {
  pdl_wait();
  pdl_trigger();
  const int64_t r = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  float* xr = x + r * x_stride;
  float sum_sq = 0.0f;
  for (int64_t i = lane; i < cols; i += 32) {
    float v = xr[i];
    if constexpr (ADD) {
      v += y[r * y_stride + i];
      xr[i] = v;
    }
    sum_sq += v * v;
  }
  sum_sq = warp_sum(sum_sq);
  // Same expression as the CPU reference: 1 / sqrt(mean + eps), then w * (x * inv).
  const float inv = 1.0f / sqrtf(sum_sq / static_cast<float>(cols) + eps);
  O* o = out + r * out_stride;
  // x and out may alias (F32 out): each lane rewrites only the elements it has read itself.
  for (int64_t i = lane; i < cols; i += 32) o[i] = from_f32<O>(to_f32(weight[i]) * (xr[i] * inv));
}

// Wide rows (the hidden size): one block per row, so a decode step's single row is read by 1024
// threads at once (a few loads each, all in flight) instead of one warp's 128 dependent passes.
// Each thread sums a strided part, the warps reduce, and every thread adds the warps' sums in the
// same order.
constexpr int kWideThreads = 1024;
constexpr int kWideUnroll = 4;
constexpr int64_t kWideCols = 512;  // rows wider than this take the block kernel (a shape rule)

template <typename W, typename O, bool ADD>
__global__ void __launch_bounds__(kWideThreads)
    rms_norm_wide_kernel(float* x, int64_t x_stride, const float* y, int64_t y_stride, const W* weight, float eps,
                         O* out, int64_t out_stride, int64_t cols) {
  // The first kWideUnroll weights of this thread are read before pdl_wait() (weights are written by
  // no kernel of a step; see pdl_wait), and the first chunk's x values stay in registers for the
  // output, so neither is a dependent load after the reduction. Same values, same arithmetic.
  float w0[kWideUnroll];
#pragma unroll
  for (int u = 0; u < kWideUnroll; ++u) {
    const int64_t i = threadIdx.x + int64_t{u} * kWideThreads;
    w0[u] = i < cols ? to_f32(weight[i]) : 0.0f;
  }
  pdl_wait();
  pdl_trigger();
  __shared__ float part_s[kWideThreads / 32];
  const int64_t r = blockIdx.x;
  float* xr = x + r * x_stride;
  float sum_sq = 0.0f;
  float x0[kWideUnroll];
  for (int64_t i0 = threadIdx.x; i0 < cols; i0 += kWideThreads * kWideUnroll) {
    float v[kWideUnroll];
#pragma unroll
    for (int u = 0; u < kWideUnroll; ++u) {
      const int64_t i = i0 + int64_t{u} * kWideThreads;
      v[u] = i < cols ? xr[i] : 0.0f;
      if constexpr (ADD) {
        if (i < cols) {
          v[u] += y[r * y_stride + i];
          xr[i] = v[u];
        }
      }
    }
    if (i0 == threadIdx.x) {
#pragma unroll
      for (int u = 0; u < kWideUnroll; ++u) x0[u] = v[u];
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
  O* o = out + r * out_stride;
  // x and out may alias (F32 out): each thread rewrites only the elements it has read itself.
#pragma unroll
  for (int u = 0; u < kWideUnroll; ++u) {
    const int64_t i = threadIdx.x + int64_t{u} * kWideThreads;
    if (i < cols) o[i] = from_f32<O>(w0[u] * (x0[u] * inv));
  }
  for (int64_t i = threadIdx.x + int64_t{kWideUnroll} * kWideThreads; i < cols; i += kWideThreads)
    o[i] = from_f32<O>(to_f32(weight[i]) * (xr[i] * inv));
}

}  // namespace

void CudaOps::norm_rows(const MatView& x, const MatView* y, const VecView& weight, float eps, const MatView& out) {
  const char* op = y != nullptr ? "add_rms_norm" : "rms_norm";
  if (x.dtype != DType::F32 || (y != nullptr && y->dtype != DType::F32))
    throw Error(std::string("cuda backend: ") + op + " needs F32 activations");
  if (out.dtype != DType::F32 && out.data == x.data)
    throw Error(std::string("cuda backend: ") + op + " with a 16-bit out cannot write over x");
  if (weight.n != x.cols || out.rows != x.rows || out.cols != x.cols ||
      (y != nullptr && (y->rows != x.rows || y->cols != x.cols)))
    throw Error(std::string("cuda backend: ") + op + " shape mismatch");
  if (x.rows == 0) return;
  if (x.cols > kWideCols && x.rows > 0x7fffffff) throw Error(std::string("cuda backend: ") + op + " of too many rows");
  auto* xp = static_cast<float*>(x.data);
  const float* yp = y != nullptr ? static_cast<const float*>(y->data) : nullptr;
  const int64_t y_stride = y != nullptr ? y->row_stride : 0;
  dispatch_dtype(weight.dtype, [&](auto wtag) {
    dispatch_dtype(out.dtype, [&](auto otag) {
      using W = typename decltype(wtag)::type;
      using O = typename decltype(otag)::type;
      const auto* wp = static_cast<const W*>(weight.data);
      auto* op_ = static_cast<O*>(out.data);
      auto launch = [&](auto add) {
        constexpr bool ADD = decltype(add)::value;
        if (x.cols > kWideCols) {
          launch_pdl(rms_norm_wide_kernel<W, O, ADD>, static_cast<unsigned>(x.rows), kWideThreads, 0, stream_, xp,
                     x.row_stride, yp, y_stride, wp, eps, op_, out.row_stride, x.cols);
        } else {
          launch_pdl(rms_norm_kernel<W, O, ADD>, grid_1d(x.rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream_, xp,
                     x.row_stride, yp, y_stride, wp, eps, op_, out.row_stride, x.rows, x.cols);
        }
      };
      if (y != nullptr)
        launch(std::true_type{});
      else
        launch(std::false_type{});
    });
  });
  HEADINFER_CUDA_CHECK_LAUNCH();
}

void CudaOps::rms_norm(const MatView& x, const VecView& weight, float eps, const MatView& out) {
  norm_rows(x, nullptr, weight, eps, out);
}

void CudaOps::add_rms_norm(const MatView& x, const MatView& y, const VecView& weight, float eps, const MatView& out) {
  if (out.data == x.data || out.data == y.data) throw Error("cuda backend: add_rms_norm's out aliases an input");
  norm_rows(x, &y, weight, eps, out);
}

}  // namespace headinfer::cuda
