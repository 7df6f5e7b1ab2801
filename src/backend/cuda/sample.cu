// Sampling on the device: softmax(x / T) cut to the top k and then to the top-p prefix, one draw.
// The candidates are sorted by value, then index (a stable descending radix sort of (x / T, index)
// pairs: ties keep ascending indices, as the host sampler orders them); weights exp(v_i - v_0) and
// their running sum are in double; the cut is the first i whose running mass reaches top_p and the
// draw the first i whose running sum passes uniform * total. The running sum is a parallel scan,
// so a draw within ~1e-16 of a boundary may fall on the other side of it than the host's serial
// sum would put it.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "cuda_common.h"
#include "cuda_ops.h"

namespace headinfer::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kPickThreads = 1024;

__global__ void scale_kernel(const float* x, int64_t n, float temperature, float* keys, int32_t* idx) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= n) return;
  keys[i] = x[i] / temperature;  // the host sampler's float division
  idx[i] = static_cast<int32_t>(i);
}

__global__ void weights_kernel(const float* sorted, int64_t keep, double* w) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= keep) return;
  w[i] = exp(static_cast<double>(sorted[i]) - static_cast<double>(sorted[0]));
}

// The first i in [0, n) with pred(i), or n: a block-wide minimum.
template <typename Pred>
__device__ int64_t first_where(int64_t n, Pred pred) {
  __shared__ int64_t best_s[kPickThreads / 32];
  int64_t best = n;
  for (int64_t i = threadIdx.x; i < n; i += kPickThreads)
    if (pred(i)) {
      best = i;
      break;  // i grows: this thread's first is its smallest
    }
  for (int o = 16; o > 0; o >>= 1) best = min(best, __shfl_xor_sync(0xffffffffu, best, o));
  if (threadIdx.x % 32 == 0) best_s[threadIdx.x / 32] = best;
  __syncthreads();
  best = n;
  for (int w = 0; w < kPickThreads / 32; ++w) best = min(best, best_s[w]);
  __syncthreads();  // best_s is read by everyone before a later call rewrites it
  return best;
}

__global__ void __launch_bounds__(kPickThreads)
    pick_kernel(const double* cum, const int32_t* idx, int64_t keep, float top_p, double uniform, int32_t* out) {
  double total = cum[keep - 1];
  int64_t n = keep;
  if (top_p < 1.0f) {
    // cum is non-decreasing, so the first index reaching the mass is the cut.
    const int64_t cut = first_where(keep, [&](int64_t i) { return cum[i] / total >= static_cast<double>(top_p); });
    n = cut < keep ? cut + 1 : keep;
    total = cum[n - 1];
  }
  const double u = uniform * total;
  const int64_t pick = first_where(n, [&](int64_t i) { return u < cum[i]; });
  if (threadIdx.x == 0) *out = idx[pick < n ? pick : n - 1];
}

size_t sort_bytes(int64_t n) {
  size_t bytes = 0;
  HEADINFER_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(nullptr, bytes, static_cast<const float*>(nullptr),
                                                                 static_cast<float*>(nullptr),
                                                                 static_cast<const int32_t*>(nullptr),
                                                                 static_cast<int32_t*>(nullptr), static_cast<int>(n)));
  return bytes;
}

size_t scan_bytes(int64_t n) {
  size_t bytes = 0;
  HEADINFER_CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, bytes, static_cast<const double*>(nullptr),
                                                     static_cast<double*>(nullptr), static_cast<int>(n)));
  return bytes;
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

}  // namespace

// Keys and indices twice (sort in and out), weights and their running sum, CUB's temporary storage.
size_t sample_scratch_bytes(int64_t vocab) {
  if (vocab <= 0) return 0;
  const auto n = static_cast<size_t>(vocab);
  return 4 * align256(n * 4) + 2 * align256(n * 8) + align256(std::max(sort_bytes(vocab), scan_bytes(vocab)));
}

void CudaOps::sample_token(const MatView& x, float temperature, int64_t top_k, float top_p, double uniform,
                           int32_t* out) {
  if (x.dtype != DType::F32 || x.rows != 1 || x.cols < 1) throw Error("cuda backend: sampling needs one F32 row");
  if (!(temperature > 0.0f) || !(top_p > 0.0f && top_p <= 1.0f) || top_k < 0 || !(uniform >= 0.0 && uniform < 1.0))
    throw Error("cuda backend: bad sampling parameters");
  const int64_t n = x.cols;
  if (n > INT32_MAX) throw Error("cuda backend: vocabulary too large to sample");
  char* base = static_cast<char*>(sample_scratch_.get(sample_scratch_bytes(n)));
  const size_t f4 = align256(static_cast<size_t>(n) * 4), f8 = align256(static_cast<size_t>(n) * 8);
  auto* keys_in = reinterpret_cast<float*>(base);
  auto* keys_out = reinterpret_cast<float*>(base + f4);
  auto* idx_in = reinterpret_cast<int32_t*>(base + 2 * f4);
  auto* idx_out = reinterpret_cast<int32_t*>(base + 3 * f4);
  auto* w = reinterpret_cast<double*>(base + 4 * f4);
  auto* cum = reinterpret_cast<double*>(base + 4 * f4 + f8);
  void* temp = base + 4 * f4 + 2 * f8;
  size_t temp_bytes = std::max(sort_bytes(n), scan_bytes(n));

  scale_kernel<<<grid_1d(n, kThreads), kThreads, 0, stream_>>>(static_cast<const float*>(x.data), n, temperature,
                                                                keys_in, idx_in);
  HEADINFER_CUDA_CHECK_LAUNCH();
  HEADINFER_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(temp, temp_bytes, keys_in, keys_out, idx_in, idx_out,
                                                                 static_cast<int>(n), 0, 32, stream_));
  const int64_t keep = top_k > 0 && top_k < n ? top_k : n;
  weights_kernel<<<grid_1d(keep, kThreads), kThreads, 0, stream_>>>(keys_out, keep, w);
  HEADINFER_CUDA_CHECK_LAUNCH();
  temp_bytes = std::max(sort_bytes(n), scan_bytes(n));
  HEADINFER_CUDA_CHECK(cub::DeviceScan::InclusiveSum(temp, temp_bytes, w, cum, static_cast<int>(keep), stream_));
  pick_kernel<<<1, kPickThreads, 0, stream_>>>(cum, idx_out, keep, top_p, uniform, out);
  HEADINFER_CUDA_CHECK_LAUNCH();
}

}  // namespace headinfer::cuda
