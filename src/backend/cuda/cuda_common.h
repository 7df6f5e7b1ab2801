#pragma once
// Shared by the CUDA op families: error checks, fp32 widening of checkpoint dtypes, and the one
// place where runtime choices (dtype, head_dim) become template constants.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "headinfer/dtype.h"
#include "headinfer/error.h"

namespace headinfer::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t e, const char* expr, const char* file, int line);

#define HEADINFER_CUDA_CHECK(expr)                                                     \
  do {                                                                                 \
    const cudaError_t headinfer_err_ = (expr);                                         \
    if (headinfer_err_ != cudaSuccess)                                                 \
      ::headinfer::cuda::throw_cuda_error(headinfer_err_, #expr, __FILE__, __LINE__); \
  } while (0)
// After every launch: launch-configuration errors surface here, not at the next sync.
#define HEADINFER_CUDA_CHECK_LAUNCH() HEADINFER_CUDA_CHECK(cudaGetLastError())

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

template <typename T>
struct TypeTag {
  using type = T;
};

// The dtype switch: f receives TypeTag<float>, TypeTag<__nv_bfloat16> or TypeTag<__half>.
template <typename F>
void dispatch_dtype(DType t, F&& f) {
  switch (t) {
    case DType::F32: f(TypeTag<float>{}); return;
    case DType::BF16: f(TypeTag<__nv_bfloat16>{}); return;
    case DType::F16: f(TypeTag<__half>{}); return;
  }
  throw Error("cuda backend: unsupported dtype");
}

template <int D>
struct HeadDimTag {
  static constexpr int value = D;
};

// The head_dim switch for kernels that keep a head's vector in registers.
template <typename F>
void dispatch_head_dim(int64_t head_dim, F&& f) {
  switch (head_dim) {
    case 8: f(HeadDimTag<8>{}); return;
    case 16: f(HeadDimTag<16>{}); return;
    case 32: f(HeadDimTag<32>{}); return;
    case 64: f(HeadDimTag<64>{}); return;
    case 96: f(HeadDimTag<96>{}); return;
    case 128: f(HeadDimTag<128>{}); return;
    case 256: f(HeadDimTag<256>{}); return;
    default:
      throw Error("cuda backend: head_dim " + std::to_string(head_dim) +
                  " is not supported (8, 16, 32, 64, 96, 128, 256)");
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

inline unsigned grid_1d(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace headinfer::cuda
