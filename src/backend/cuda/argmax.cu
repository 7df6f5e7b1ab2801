// argmax over the logits on the device, so greedy decoding reads back 4 bytes instead of [vocab]
// floats. The host sampler's rule (headinfer::argmax): the first index of the largest value, NaNs
// never win, except that a NaN at index 0 stays (every `x[i] > NaN` is false).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cuda_common.h"
#include "cuda_ops.h"

namespace headinfer::cuda {
namespace {

constexpr int kArgmaxThreads = 1024;

// Whether (v, i) beats (best_v, best_i): larger, or equal at a smaller index; NaN never beats.
__device__ __forceinline__ bool beats(float v, int64_t i, float best_v, int64_t best_i) {
  if (isnan(v)) return false;
  if (isnan(best_v)) return true;
  return v > best_v || (v == best_v && i < best_i);
}

// The loads a thread has in flight at once (16 bytes each).
constexpr int kArgmaxUnroll = 8;

// One block: each thread scans a strided part, then the block reduces (value, index) pairs. The
// scan reads 16-byte vectors, kArgmaxUnroll of them issued before the first is used (one thread's
// scalar loads one after another made this 28 us of a decode step at 128K logits); the rule is
// order-free (largest, then lowest index; NaN never beats), so the order of the scan changes no pick.
__global__ void __launch_bounds__(kArgmaxThreads) argmax_kernel(const float* x, int64_t n, int32_t* out) {
  pdl_wait();
  pdl_trigger();
  __shared__ float val_s[kArgmaxThreads / 32];
  __shared__ int64_t idx_s[kArgmaxThreads / 32];
  float best_v = NAN;
  int64_t best_i = n;
  auto consider = [&](float v, int64_t i) {
    if (beats(v, i, best_v, best_i)) {
      best_v = v;
      best_i = i;
    }
  };
  // Elements before the first 16-byte boundary, then whole vectors, then the tail.
  const int64_t head = std::min<int64_t>(n, ((16 - reinterpret_cast<uintptr_t>(x) % 16) % 16) / sizeof(float));
  const int64_t n4 = (n - head) / 4;
  if (threadIdx.x < head) consider(x[threadIdx.x], threadIdx.x);
  const auto* x4 = reinterpret_cast<const float4*>(x + head);
  for (int64_t b = threadIdx.x; b < n4; b += int64_t{kArgmaxThreads} * kArgmaxUnroll) {
    float4 v[kArgmaxUnroll];
#pragma unroll
    for (int u = 0; u < kArgmaxUnroll; ++u) {
      const int64_t j = b + int64_t{u} * kArgmaxThreads;
      v[u] = j < n4 ? x4[j] : make_float4(NAN, NAN, NAN, NAN);  // NaN: never picked
    }
#pragma unroll
    for (int u = 0; u < kArgmaxUnroll; ++u) {
      const int64_t i = head + (b + int64_t{u} * kArgmaxThreads) * 4;
      consider(v[u].x, i);
      consider(v[u].y, i + 1);
      consider(v[u].z, i + 2);
      consider(v[u].w, i + 3);
    }
  }
  for (int64_t i = head + n4 * 4 + threadIdx.x; i < n; i += kArgmaxThreads) consider(x[i], i);
  for (int o = 16; o > 0; o >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, best_v, o);
    const int64_t i = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (beats(v, i, best_v, best_i)) {
      best_v = v;
      best_i = i;
    }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    val_s[warp] = best_v;
    idx_s[warp] = best_i;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < kArgmaxThreads / 32; ++w)
    if (beats(val_s[w], idx_s[w], best_v, best_i)) {
      best_v = val_s[w];
      best_i = idx_s[w];
    }
  // All NaN, or NaN first: the host loop never moves off index 0.
  *out = (isnan(x[0]) || best_i >= n) ? 0 : static_cast<int32_t>(best_i);
}

}  // namespace

void CudaOps::argmax(const MatView& x, int32_t* out) {
  if (x.dtype != DType::F32 || x.rows != 1 || x.cols < 1) throw Error("cuda backend: argmax needs one F32 row");
  launch_pdl(argmax_kernel, 1, kArgmaxThreads, 0, stream_, static_cast<const float*>(x.data), x.cols, out);
  HEADINFER_CUDA_CHECK_LAUNCH();
}

}  // namespace headinfer::cuda
