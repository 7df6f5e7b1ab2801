// Layout kernels around cuDNN's SDPA: the engine keeps fp32 activations and wants the lse next to
// each row, cuDNN takes 16-bit Q and writes 16-bit O and head-major Stats. Both are memory-bound
// passes over T x h x d elements, small next to the attention itself (T x n_keys x h x d work).
#include "attention_internal.h"
#include "cuda_common.h"

namespace headinfer::cuda {
namespace {

// Both kernels: a row a blockIdx.y (rows past 65535 in steps of gridDim.y), four columns a thread,
// 8- and 16-byte accesses where vec4. They were one thread an element with a 64-bit division each,
// at under half the card's bandwidth.
template <typename T16>
__global__ void pack_q_kernel(const float* q, int64_t q_ld, int64_t rows, int64_t cols, T16* q16, bool vec4) {
  const int64_t c = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) * 4;
  if (c >= cols) return;
  for (int64_t t = blockIdx.y; t < rows; t += gridDim.y) {
    convert4(q + t * q_ld + c, q16 + t * cols + c, cols - c, vec4);
  }
}

// The thread holding dim 0 of a head also moves that row's lse.
template <typename T16>
__global__ void unpack_out_kernel(const T16* o16, const float* stats, int64_t s_q, int64_t h_q, int64_t d,
                                  float* out, int64_t out_ld, float* lse, int64_t lse_ld, bool vec4) {
  const int64_t cols = h_q * d;
  const int64_t c = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) * 4;
  if (c >= cols) return;
  const int64_t h0 = (c + d - 1) / d;  // the heads whose dim 0 is among this thread's columns
  for (int64_t t = blockIdx.y; t < s_q; t += gridDim.y) {
    convert4(o16 + t * cols + c, out + t * out_ld + c, cols - c, vec4);
    for (int64_t h = h0; h * d < c + 4 && h < h_q; ++h) lse[t * lse_ld + h] = stats[h * s_q + t];
  }
}

__global__ void unpack_lse_kernel(const float* stats, int64_t s_q, int64_t h_q, float* lse, int64_t lse_ld) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= s_q * h_q) return;
  const int64_t t = i / h_q, h = i % h_q;
  lse[t * lse_ld + h] = stats[h * s_q + t];
}

}  // namespace

void sdpa_unpack_lse(const float* stats, int64_t s_q, int64_t h_q, const MatView& lse, cudaStream_t stream) {
  constexpr int kThreads = 256;
  unpack_lse_kernel<<<grid_1d(s_q * h_q, kThreads), kThreads, 0, stream>>>(stats, s_q, h_q,
                                                                          static_cast<float*>(lse.data), lse.row_stride);
  HEADINFER_CUDA_CHECK_LAUNCH();
}

void sdpa_pack_q(const MatView& q, int64_t cols, void* q16, DType t16, cudaStream_t stream) {
  constexpr int kThreads = 256;
  dispatch_dtype(t16, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vec4 = vec4_ok(q.data, q.row_stride, cols, sizeof(float)) && vec4_ok(q16, cols, cols, sizeof(T));
    pack_q_kernel<T><<<grid_rows4(q.rows, cols, kThreads), kThreads, 0, stream>>>(
        static_cast<const float*>(q.data), q.row_stride, q.rows, cols, static_cast<T*>(q16), vec4);
  });
  HEADINFER_CUDA_CHECK_LAUNCH();
}

void sdpa_unpack_out(const void* o16, const float* stats, DType t16, int64_t s_q, int64_t h_q, int64_t d,
                     const MatView& out, const MatView& lse, cudaStream_t stream) {
  constexpr int kThreads = 256;
  dispatch_dtype(t16, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vec4 =
        vec4_ok(o16, h_q * d, h_q * d, sizeof(T)) && vec4_ok(out.data, out.row_stride, h_q * d, sizeof(float));
    unpack_out_kernel<T><<<grid_rows4(s_q, h_q * d, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(o16), stats, s_q, h_q, d, static_cast<float*>(out.data), out.row_stride,
        static_cast<float*>(lse.data), lse.row_stride, vec4);
  });
  HEADINFER_CUDA_CHECK_LAUNCH();
}

}  // namespace headinfer::cuda
