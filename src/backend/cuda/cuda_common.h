#pragma once
// Shared by the CUDA op families: error checks, fp32 widening of checkpoint dtypes, and the one
// place where runtime choices (dtype, head_dim) become template constants.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <utility>

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

// Four consecutive elements in one access: 16 bytes of F32, 8 of a 16-bit dtype. The pointer must
// be aligned to the access (vec4_ok() checks a view on the host); the values are the scalar
// conversions', bit for bit.
template <typename T>
__device__ __forceinline__ float4 load4(const T* p) {
  if constexpr (sizeof(T) == 4) {
    return *reinterpret_cast<const float4*>(p);
  } else {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    const T* v = reinterpret_cast<const T*>(&raw);
    return make_float4(to_f32(v[0]), to_f32(v[1]), to_f32(v[2]), to_f32(v[3]));
  }
}
template <typename T>
__device__ __forceinline__ void store4(T* p, float4 v) {
  if constexpr (sizeof(T) == 4) {
    *reinterpret_cast<float4*>(p) = v;
  } else {
    uint2 raw;
    T* o = reinterpret_cast<T*>(&raw);
    o[0] = from_f32<T>(v.x);
    o[1] = from_f32<T>(v.y);
    o[2] = from_f32<T>(v.z);
    o[3] = from_f32<T>(v.w);
    *reinterpret_cast<uint2*>(p) = raw;
  }
}
// dst[0..4) = src[0..4) converted (the first `left` of them where fewer remain): one load4/store4
// where vec4, element by element otherwise; the same values either way.
template <typename S, typename D>
__device__ __forceinline__ void convert4(const S* src, D* dst, int64_t left, bool vec4) {
  if (vec4) {
    store4(dst, load4(src));
  } else {
    for (int64_t i = 0; i < 4 && i < left; ++i) dst[i] = from_f32<D>(to_f32(src[i]));
  }
}
// Whether rows of elem_bytes-wide elements at p, row_stride elements apart, take load4/store4 at
// every fourth column from 0 (cols a multiple of 4 too).
inline bool vec4_ok(const void* p, int64_t row_stride, int64_t cols, size_t elem_bytes) {
  return reinterpret_cast<uintptr_t>(p) % (4 * elem_bytes) == 0 && row_stride % 4 == 0 && cols % 4 == 0;
}

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

// The gated activations, shared by the element-wise kernels and the decode GEMV that fuses them,
// so both round alike. silu: expf, not __expf (the CPU reference uses std::exp). gelu: torch's
// gelu(approximate='tanh') in fp32 with tanhf, each operation rounded as the CPU reference rounds.
__device__ __forceinline__ float silu_times(float g, float u) { return g * (1.0f / (1.0f + expf(-g))) * u; }
__device__ __forceinline__ float gelu_tanh_times(float g, float u, float beta) {
  const float inner = __fmul_rn(beta, __fadd_rn(g, __fmul_rn(0.044715f, __fmul_rn(__fmul_rn(g, g), g))));
  return __fmul_rn(__fmul_rn(__fmul_rn(0.5f, g), __fadd_rn(1.0f, tanhf(inner))), u);
}
constexpr float kGeluTanhBeta = 0.7978845608028654f;  // sqrt(2 / pi), as torch's kBeta

// Programmatic dependent launch (PDL, sm_90+). A kernel launched by launch_pdl() may be scheduled
// while the kernel before it on the stream is still running, so its launch and set-up overlap that
// kernel's tail: a decode step is ~325 short kernels (llama3-8b), and each boundary costs a few
// microseconds.
// Every kernel launched by launch_pdl() must call pdl_wait() before it touches global memory
// (griddepcontrol.wait returns once the kernels before it have finished and their writes are
// visible); pdl_trigger() lets the next kernel be scheduled early (its blocks only wait). Both are
// no-ops for a kernel launched the ordinary way and on cards before sm_90, so calling them first in
// every kernel costs nothing. The arithmetic is untouched: results are the same with or without.
// One exception: memory that the kernel just before cannot be writing may be read before the wait.
// Every kernel here calls pdl_trigger() only after its own wait, so when a kernel starts, every
// kernel before the one just ahead of it has finished; only that one may still run. The wide
// RMSNorm reads its weights early (no kernel writes weights), and the decode attention copies its
// settled keys (AttentionArgs::settled_keys: the op just ahead writes only the step's new rows).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
// Whether launch_pdl() sets the attribute on the current device: compute capability 9.0 or later,
// unless HEADINFER_PDL=0 (for A/B measurements).
bool pdl_on_current_device();

// kernel<<<grid, block, smem, stream>>>(args...), launched with programmatic stream serialisation
// where pdl_on_current_device(); the kernel must begin with pdl_wait().
template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_on_current_device() ? 1 : 0;
  HEADINFER_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

inline unsigned grid_1d(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }
// Four columns a thread, a row a blockIdx.y (kernels step rows by gridDim.y past 65535).
inline dim3 grid_rows4(int64_t rows, int64_t cols, int threads) {
  return dim3(grid_1d((cols + 3) / 4, threads), static_cast<unsigned>(rows < 1 ? 1 : rows < 65535 ? rows : 65535));
}

}  // namespace headinfer::cuda
