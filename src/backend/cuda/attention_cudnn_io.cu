// Layout kernels around cuDNN's SDPA: the engine keeps fp32 activations and wants the lse next to
// each row, cuDNN takes 16-bit Q and writes 16-bit O and head-major Stats. Both are memory-bound
// passes over T x h x d elements, small next to the attention itself (T x n_keys x h x d work).
#include "attention_internal.h"
#include "cuda_common.h"

namespace headinfer::cuda {
namespace {

template <typename T16>
__global__ void pack_q_kernel(const float* q, int64_t q_ld, int64_t rows, int64_t cols, T16* q16) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t t = i / cols, c = i % cols;
  q16[i] = from_f32<T16>(q[t * q_ld + c]);
}

// One thread per output element; the thread of dim 0 also moves that row's lse.
template <typename T16>
__global__ void unpack_out_kernel(const T16* o16, const float* stats, int64_t s_q, int64_t h_q, int64_t d,
                                  float* out, int64_t out_ld, float* lse, int64_t lse_ld) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t cols = h_q * d;
  if (i >= s_q * cols) return;
  const int64_t t = i / cols, c = i % cols;
  out[t * out_ld + c] = to_f32(o16[i]);
  if (c % d == 0) {
    const int64_t h = c / d;
    lse[t * lse_ld + h] = stats[h * s_q + t];
  }
}

}  // namespace

void sdpa_pack_q(const MatView& q, int64_t cols, void* q16, DType t16, cudaStream_t stream) {
  constexpr int kThreads = 256;
  dispatch_dtype(t16, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pack_q_kernel<T><<<grid_1d(q.rows * cols, kThreads), kThreads, 0, stream>>>(
        static_cast<const float*>(q.data), q.row_stride, q.rows, cols, static_cast<T*>(q16));
  });
  HEADINFER_CUDA_CHECK_LAUNCH();
}

void sdpa_unpack_out(const void* o16, const float* stats, DType t16, int64_t s_q, int64_t h_q, int64_t d,
                     const MatView& out, const MatView& lse, cudaStream_t stream) {
  constexpr int kThreads = 256;
  dispatch_dtype(t16, [&](auto tag) {
    using T = typename decltype(tag)::type;
    unpack_out_kernel<T><<<grid_1d(s_q * h_q * d, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(o16), stats, s_q, h_q, d, static_cast<float*>(out.data), out.row_stride,
        static_cast<float*>(lse.data), lse.row_stride);
  });
  HEADINFER_CUDA_CHECK_LAUNCH();
}

}  // namespace headinfer::cuda
