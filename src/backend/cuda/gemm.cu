// linear: y = x W^T (+ bias), x F32 [T, in], W [out, in] in the checkpoint dtype, y F32 [T, out].
//  - F32 weights: cuBLASLt with CUBLAS_COMPUTE_32F (TF32 off), so f32 checkpoints track the CPU
//    reference to fp32 rounding.
//  - BF16/F16 weights, few tokens (decode): a warp-per-row GEMV that widens W to fp32 and keeps x
//    in fp32; it is bound by reading W once, and its numbers match the CPU's fp32 arithmetic.
//  - BF16/F16 weights, many tokens (prefill): x is rounded to W's dtype and cuBLASLt runs the
//    tensor cores with fp32 accumulation and fp32 output.
#include <cublasLt.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <system_error>
#include <type_traits>

#include "cuda_common.h"
#include "cuda_ops.h"
#include "headinfer/env_switch.h"

namespace headinfer::cuda {
namespace {

constexpr int64_t kGemvMaxTokens = 8;     // above this, the tensor-core GEMM wins
constexpr int kGemvWarps = 8;             // output rows per block
constexpr size_t kLtWorkspaceBytes = size_t{32} << 20;  // cuBLASLt's recommendation for Hopper

void check_lt(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuBLASLt error ") + std::to_string(static_cast<int>(s)) + " in " + what);
}

// Largest power of two (up to 256) dividing the address: what cuBLASLt's heuristic must assume.
int64_t pointer_alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  int64_t align = 256;
  while (align > 1 && a % static_cast<uintptr_t>(align) != 0) align /= 2;
  return align;
}

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
  }
  throw Error("cuda backend: unsupported dtype");
}

// Up to three weights sharing x (q/k/v, gate/up) in one launch: output rows are numbered across
// the segments, and each row is computed exactly as a launch for its weight alone computes it.
template <typename W>
struct GemvSegments {
  const W* w[3];
  float* y[3];
  int64_t y_ld[3];
  int64_t end[3];  // cumulative rows: segment s holds rows [end[s-1], end[s])
  int n;
};

// One warp per output row j; each lane accumulates a strided part of the dot products of the
// T (<= TOKENS) rows of x with W[j], then the warp reduces. VEC: 16-byte loads (8 weights, 2x4
// inputs), kGemvUnroll of them issued before the first is used, so each warp keeps several loads
// in flight (a decode step is bound by reading W once). TOKENS = 1 is the decode step's kernel:
// one accumulator, few registers, full occupancy. The sums run in the same order in every variant.
constexpr int kGemvUnroll = 4;

// The 8 weights of a 16-byte load as fp32, by bit operations on its four words (exact, like
// to_f32); no address of the loaded value is taken, so it stays in registers.
template <typename W>
__device__ __forceinline__ void widen8(const uint4& raw, float* wf) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if constexpr (std::is_same_v<W, __nv_bfloat16>) {
      wf[2 * k] = __uint_as_float(words[k] << 16);
      wf[2 * k + 1] = __uint_as_float(words[k] & 0xffff0000u);
    } else {
      wf[2 * k] = __half2float(__ushort_as_half(static_cast<unsigned short>(words[k] & 0xffffu)));
      wf[2 * k + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(words[k] >> 16)));
    }
  }
}

// x[0..8) . wf[0..8), x 16-byte aligned: the GEMV's one sum, in one order for every kernel below.
__device__ __forceinline__ float dot8(const float* x, const float* wf) {
  const float4 x0 = *reinterpret_cast<const float4*>(x);
  const float4 x1 = *reinterpret_cast<const float4*>(x + 4);
  return x0.x * wf[0] + x0.y * wf[1] + x0.z * wf[2] + x0.w * wf[3] + x1.x * wf[4] + x1.y * wf[5] + x1.z * wf[6] +
         x1.w * wf[7];
}

// UNROLL: the loads a lane issues before using the first (kGemvUnroll, or 8 where
// HEADINFER_GEMV_UNROLL=8 asks for it: an A/B knob, see gemv_unroll()). Each lane visits its
// columns in the same order for every UNROLL, so the sums and their bits are the same.
template <typename W, bool VEC, int TOKENS, int UNROLL = kGemvUnroll>
__global__ void __launch_bounds__(32 * kGemvWarps)
    gemv_kernel(const float* x, int64_t x_ld, GemvSegments<W> seg, int64_t in, int n_tokens) {
  pdl_wait();
  pdl_trigger();
  const int64_t row = blockIdx.x * int64_t{kGemvWarps} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= seg.end[2]) return;  // unused segments repeat the last end
  // The segment by comparisons, not an indexed parameter array (which would live in local memory).
  const int s = row < seg.end[0] ? 0 : row < seg.end[1] ? 1 : 2;
  const int64_t j = row - (s == 0 ? 0 : s == 1 ? seg.end[0] : seg.end[1]);
  const W* wr = (s == 0 ? seg.w[0] : s == 1 ? seg.w[1] : seg.w[2]) + j * in;
  float acc[TOKENS];
#pragma unroll
  for (int t = 0; t < TOKENS; ++t) acc[t] = 0.0f;
  if constexpr (VEC) {
    constexpr int64_t kStride = 32 * 8;
    for (int64_t base = int64_t{lane} * 8; base < in; base += kStride * UNROLL) {
      uint4 raw[UNROLL];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int64_t i = base + u * kStride;
        raw[u] = i < in ? __ldg(reinterpret_cast<const uint4*>(wr + i)) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int64_t i = base + u * kStride;
        if (i >= in) break;
        float wf[8];
        widen8<W>(raw[u], wf);
#pragma unroll
        for (int t = 0; t < TOKENS; ++t) {
          if (t >= n_tokens) break;
          acc[t] += dot8(x + t * x_ld + i, wf);
        }
      }
    }
  } else {
    for (int64_t i = lane; i < in; i += 32) {
      const float wf = to_f32(wr[i]);
#pragma unroll
      for (int t = 0; t < TOKENS; ++t) {
        if (t >= n_tokens) break;
        acc[t] += x[t * x_ld + i] * wf;
      }
    }
  }
  float* y = s == 0 ? seg.y[0] : s == 1 ? seg.y[1] : seg.y[2];
  const int64_t y_ld = s == 0 ? seg.y_ld[0] : s == 1 ? seg.y_ld[1] : seg.y_ld[2];
#pragma unroll
  for (int t = 0; t < TOKENS; ++t) {
    if (t >= n_tokens) break;
    const float sum = warp_sum(acc[t]);
    if (lane == 0) y[t * y_ld + j] = sum;
  }
}

// The MLP's gated input for one token (decode): warp j computes gate row j and up row j as
// gemv_kernel<W, true, 1> computes each (the same loads per lane, the same dot8 sums in the same
// order, the same warp_sum), both rows' loads in flight together, and writes only
// act(gate) * up, as silu_mul / gelu_tanh_mul would from the two stored rows: one launch and one
// pass over the [ffn] vectors fewer per layer, the same bits.
template <typename W, bool GELU>
__global__ void __launch_bounds__(32 * kGemvWarps)
    gemv_gated_kernel(const float* x, const W* w_gate, const W* w_up, float* out, int64_t rows, int64_t in) {
  pdl_wait();
  pdl_trigger();
  const int64_t j = blockIdx.x * int64_t{kGemvWarps} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (j >= rows) return;
  const W* wg = w_gate + j * in;
  const W* wu = w_up + j * in;
  float acc_g = 0.0f, acc_u = 0.0f;
  constexpr int64_t kStride = 32 * 8;
  for (int64_t base = int64_t{lane} * 8; base < in; base += kStride * kGemvUnroll) {
    uint4 raw_g[kGemvUnroll], raw_u[kGemvUnroll];
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) {
      const int64_t i = base + u * kStride;
      raw_g[u] = i < in ? __ldg(reinterpret_cast<const uint4*>(wg + i)) : make_uint4(0, 0, 0, 0);
      raw_u[u] = i < in ? __ldg(reinterpret_cast<const uint4*>(wu + i)) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) {
      const int64_t i = base + u * kStride;
      if (i >= in) break;
      float wf[8];
      widen8<W>(raw_g[u], wf);
      acc_g += dot8(x + i, wf);
      widen8<W>(raw_u[u], wf);
      acc_u += dot8(x + i, wf);
    }
  }
  const float g = warp_sum(acc_g), up = warp_sum(acc_u);
  if (lane == 0) out[j] = GELU ? gelu_tanh_times(g, up, kGeluTanhBeta) : silu_times(g, up);
}

// x F32 [rows, cols] (rows x_ld apart) -> dst [rows, cols] contiguous in D. One row per blockIdx.y,
// four columns per thread (16-byte loads where cols and x_ld are multiples of 4): a 64-bit
// division per element made this a fifth of a prefill's element-wise time.
template <typename D>
__global__ void cast_rows_kernel(const float* x, int64_t x_ld, D* dst, int64_t cols, bool vec4) {
  const int64_t r = blockIdx.y;
  const int64_t c = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) * 4;
  if (c >= cols) return;
  const float* xr = x + r * x_ld;
  D* dr = dst + r * cols;
  if (vec4) {
    const float4 v = *reinterpret_cast<const float4*>(xr + c);
    dr[c] = from_f32<D>(v.x);
    dr[c + 1] = from_f32<D>(v.y);
    dr[c + 2] = from_f32<D>(v.z);
    dr[c + 3] = from_f32<D>(v.w);
  } else {
    for (int64_t i = c; i < c + 4 && i < cols; ++i) dr[i] = from_f32<D>(xr[i]);
  }
}

template <typename B>
__global__ void add_bias_kernel(float* y, int64_t y_ld, const B* bias, int64_t rows, int64_t cols) {
  pdl_wait();
  pdl_trigger();
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= rows * cols) return;
  const int64_t r = idx / cols, c = idx % cols;
  y[r * y_ld + c] += to_f32(bias[c]);
}

}  // namespace

size_t gemm_workspace_bytes() { return kLtWorkspaceBytes; }

namespace {

// The descriptors of y = x W^T for one shape (see lt_matmul for the layout), freed with the object.
class LtDescs {
 public:
  LtDescs(DType ab_type, DType y_type, int64_t x_ld, int64_t y_ld, int64_t m_out, int64_t n_tokens, int64_t k_in) {
    const cudaDataType_t ab = cuda_type(ab_type);
    try {
      check_lt(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul desc");
      const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
      check_lt(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)), "transa");
      check_lt(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)), "transb");
      check_lt(cublasLtMatrixLayoutCreate(&a, ab, static_cast<uint64_t>(k_in), static_cast<uint64_t>(m_out), k_in),
               "A");
      check_lt(
          cublasLtMatrixLayoutCreate(&b, ab, static_cast<uint64_t>(k_in), static_cast<uint64_t>(n_tokens), x_ld), "B");
      check_lt(cublasLtMatrixLayoutCreate(&c, cuda_type(y_type), static_cast<uint64_t>(m_out),
                                          static_cast<uint64_t>(n_tokens), y_ld),
               "C");
    } catch (...) {
      destroy();
      throw;
    }
  }
  ~LtDescs() { destroy(); }
  LtDescs(const LtDescs&) = delete;
  LtDescs& operator=(const LtDescs&) = delete;

  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;

 private:
  void destroy() {
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
  }
};

// What the heuristic's answer depends on: the shape, the dtypes, the leading dimensions and the
// pointer alignments.
std::array<int64_t, 11> gemm_key(DType ab_type, DType y_type, const void* w, const void* x, int64_t x_ld,
                                 const void* y, int64_t y_ld, int64_t m_out, int64_t n_tokens, int64_t k_in,
                                 float beta) {
  return {static_cast<int64_t>(cuda_type(ab_type)),
          m_out,
          n_tokens,
          k_in,
          x_ld,
          y_ld,
          pointer_alignment(w),
          pointer_alignment(x),
          pointer_alignment(y),
          static_cast<int64_t>(cuda_type(y_type)),
          beta != 0.0f ? 1 : 0};
}

// The heuristic's first pick for `key` (the same on every handle of a device).
cublasLtMatmulAlgo_t pick_algo(cublasLtHandle_t lt, const LtDescs& d, const std::array<int64_t, 11>& key) {
  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "preference");
  const uint64_t ws = kLtWorkspaceBytes;
  const auto al_a = static_cast<uint32_t>(key[6]), al_b = static_cast<uint32_t>(key[7]),
             al_c = static_cast<uint32_t>(key[8]);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(lt, d.op, d.a, d.b, d.c, d.c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (s != CUBLAS_STATUS_SUCCESS || found == 0)
    throw Error("cuBLASLt has no algorithm for linear [" + std::to_string(key[2]) + " x " + std::to_string(key[3]) +
                "] x [" + std::to_string(key[1]) + " x " + std::to_string(key[3]) + "]^T");
  return result.algo;
}

}  // namespace

void CudaOps::lt_matmul(DType ab_type, const void* w, const void* x, int64_t x_ld, void* y, DType y_type,
                        int64_t y_ld, int64_t m_out, int64_t n_tokens, int64_t k_in, float beta) {
  // Column-major view: W^T is W [out, in] row-major read as [in, out] col-major, transposed;
  // x [T, in] row-major is [in, T] col-major; y [T, out] row-major is [out, T] col-major.
  const LtDescs d(ab_type, y_type, x_ld, y_ld, m_out, n_tokens, k_in);
  // prepare_linear's runs use the workspace and the callers' buffers: they end before this one.
  if (gemm_last_.valid()) wait_prepared();
  void* workspace = gemm_workspace_.get(kLtWorkspaceBytes);
  const GemmKey key = gemm_key(ab_type, y_type, w, x, x_ld, y, y_ld, m_out, n_tokens, k_in, beta);
  auto it = gemm_algos_.find(key);
  if (it == gemm_algos_.end()) {
    const auto t0 = std::chrono::steady_clock::now();
    std::optional<cublasLtMatmulAlgo_t> ahead;
    if (auto p = gemm_pending_.find(key); p != gemm_pending_.end()) {
      ahead = p->second.get();
      gemm_pending_.erase(p);
    }
    it = gemm_algos_.emplace(key, ahead ? *ahead : pick_algo(lt_, d, key)).first;
    ++(ahead ? gemm_plans_ahead_ : gemm_plans_inline_);
    if (trace_)
      std::fprintf(stderr, "[trace] cuBLASLt heuristic [%lld x %lld] x [%lld x %lld]^T: %.2f ms%s\n",
                   static_cast<long long>(n_tokens), static_cast<long long>(k_in), static_cast<long long>(m_out),
                   static_cast<long long>(k_in),
                   std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(),
                   ahead ? " (prepared ahead)" : "");
  }
  const float alpha = 1.0f;
  check_lt(cublasLtMatmul(lt_, d.op, &alpha, w, d.a, x, d.b, &beta, y, d.c, y, d.c, &it->second, workspace,
                          kLtWorkspaceBytes, stream_),
           "cublasLtMatmul");
}

std::vector<CudaOps::LtCall> CudaOps::lt_calls(const MatView& x, std::span<const LinearOut> outs) {
  std::vector<LtCall> calls;
  if (x.dtype == DType::F32 && gemv_fits(x, outs)) return calls;
  for (const LinearOut& o : outs) {  // as linear_multi and linear_cast choose
    const WeightView& w = *o.w;
    const int64_t n = x.rows, in = w.in_features, out = w.out_features;
    if (n == 0 || out == 0 || x.cols != in || o.y.rows != n || o.y.cols != out) continue;
    LtCall c{w.dtype, w.data, x.data, x.row_stride, o.y.data, o.y.dtype, o.y.row_stride, out, n, in,
             o.accumulate ? 1.0f : 0.0f};
    if (x.dtype == DType::F32 && w.dtype != DType::F32) {
      if (n <= kGemvMaxTokens) continue;  // the GEMV
      c.x = gemm_cast_.get(static_cast<size_t>(n * in) * dtype_size(w.dtype));  // where cast_input rounds x
      c.x_ld = in;
    }
    calls.push_back(c);
  }
  return calls;
}

void CudaOps::prepare_linear(const MatView& x, std::span<const LinearOut> outs) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  for (const LtCall& c : lt_calls(x, outs)) {
    const GemmKey key = gemm_key(c.ab, c.y_type, c.w, c.x, c.x_ld, c.y, c.y_ld, c.m_out, c.n_tokens, c.k_in, c.beta);
    if (gemm_algos_.count(key) != 0 || gemm_pending_.count(key) != 0) continue;
    void* workspace = gemm_workspace_.get(kLtWorkspaceBytes);
    const PlannedAlgo before = gemm_last_;
    PlannedAlgo next;
    try {
      next = std::async(std::launch::async, [this, before, c, key, workspace, device] {
               return plan_elsewhere(before, c, key, workspace, device);
             }).share();
    } catch (const std::system_error&) {  // no thread to be had: planned when it is first needed
      return;
    }
    gemm_last_ = next;
    gemm_pending_[key] = next;
  }
}

std::optional<cublasLtMatmulAlgo_t> CudaOps::plan_elsewhere(const PlannedAlgo& before, const LtCall& c,
                                                            const GemmKey& key, void* workspace, int device) {
  if (before.valid()) before.wait();
  try {
    if (cudaSetDevice(device) != cudaSuccess) return std::nullopt;
    if (gemm_builder_lt_ == nullptr && cublasLtCreate(&gemm_builder_lt_) != CUBLAS_STATUS_SUCCESS) {
      gemm_builder_lt_ = nullptr;
      return std::nullopt;
    }
    if (gemm_builder_stream_ == nullptr &&
        cudaStreamCreateWithFlags(&gemm_builder_stream_, cudaStreamNonBlocking) != cudaSuccess) {
      gemm_builder_stream_ = nullptr;
      cudaGetLastError();
      return std::nullopt;
    }
    const LtDescs d(c.ab, c.y_type, c.x_ld, c.y_ld, c.m_out, c.n_tokens, c.k_in);
    const cublasLtMatmulAlgo_t algo = pick_algo(gemm_builder_lt_, d, key);
    // One run on the caller's buffers loads the kernel (lazy module loading) now, not in the
    // first prefill; its output is garbage the first forward overwrites.
    const float alpha = 1.0f;
    if (cublasLtMatmul(gemm_builder_lt_, d.op, &alpha, c.w, d.a, c.x, d.b, &c.beta, c.y, d.c, c.y, d.c, &algo,
                       workspace, kLtWorkspaceBytes, gemm_builder_stream_) != CUBLAS_STATUS_SUCCESS ||
        cudaStreamSynchronize(gemm_builder_stream_) != cudaSuccess)
      return std::nullopt;
    return algo;
  } catch (...) {  // the main thread plans it itself when it needs it
    return std::nullopt;
  }
}

void CudaOps::wait_prepared() {
  if (!gemm_last_.valid()) return;
  gemm_last_.wait();  // the runs are chained: the last one ends after all others
  gemm_last_ = PlannedAlgo{};
}

CudaOps::~CudaOps() {
  wait_prepared();
  gemm_pending_.clear();
  if (gemm_builder_lt_ != nullptr) cublasLtDestroy(gemm_builder_lt_);
  if (gemm_builder_stream_ != nullptr) cudaStreamDestroy(gemm_builder_stream_);
  if (ids_pinned_ != nullptr) cudaFreeHost(ids_pinned_);
}

void CudaOps::add_bias(const VecView& bias, const MatView& y) {
  dispatch_dtype(bias.dtype, [&](auto tag) {
    using B = typename decltype(tag)::type;
    launch_pdl(add_bias_kernel<B>, grid_1d(y.rows * y.cols, 256), 256, 0, stream_, static_cast<float*>(y.data),
               y.row_stride, static_cast<const B*>(bias.data), y.rows, y.cols);
  });
  HEADINFER_CUDA_CHECK_LAUNCH();
}

bool CudaOps::gemv_fits(const MatView& x, std::span<const LinearOut> outs) const {
  if (x.rows < 1 || x.rows > kGemvMaxTokens || outs.empty() || outs.size() > 3 || x.dtype != DType::F32) return false;
  const WeightView& w0 = *outs[0].w;
  for (const LinearOut& o : outs)
    if (o.w->dtype == DType::F32 || o.w->dtype != w0.dtype || o.w->in_features != x.cols ||
        o.y.cols != o.w->out_features || o.y.rows != x.rows || o.y.dtype != DType::F32 ||
        (o.bias != nullptr && o.bias->n != o.w->out_features))
      return false;
  return true;
}

namespace {
// The decode GEMV's loads in flight per lane: kGemvUnroll, or 8 with HEADINFER_GEMV_UNROLL=8 (a
// knob for A/B runs, read once; any other value keeps the default). In the 8K decode profile of
// 2026-12-07 this kernel (q/k/v, o_proj, down, lm_head) read its weights at ~2.5 TB/s, against
// ~3.0 for the gated GEMV, whose lanes have two rows' loads (8) in flight.
int gemv_unroll() {
  static const int unroll = [] {
    const char* v = std::getenv("HEADINFER_GEMV_UNROLL");
    return v != nullptr && std::string(v) == "8" ? 8 : kGemvUnroll;
  }();
  return unroll;
}
}  // namespace

namespace {
// HEADINFER_RESIDUAL_GEMM (env_switch; off unless set to 1 until a card has measured it):
// linear_accumulates() says yes on the tensor-core path, so the model adds o_proj's and down_proj's
// products into the residual stream in the GEMM (beta = 1) instead of writing them out for
// add_rms_norm.
const bool kResidualGemm = env_switch("HEADINFER_RESIDUAL_GEMM", false);
}  // namespace

// The decode GEMV for up to three weights of one 16-bit dtype sharing x; bias added after.
void CudaOps::gemv(const MatView& x, std::span<const LinearOut> outs) {
  const int64_t in = x.cols;
  const auto* xp = static_cast<const float*>(x.data);
  bool vec = in % 8 == 0 && x.row_stride % 4 == 0 && pointer_alignment(xp) >= 16;
  for (const LinearOut& o : outs) vec = vec && pointer_alignment(o.w->data) >= 16;
  int64_t rows = 0;
  dispatch_dtype(outs[0].w->dtype, [&](auto tag) {
    using W = typename decltype(tag)::type;
    GemvSegments<W> seg{};
    seg.n = static_cast<int>(outs.size());
    // Unused segments repeat the last end, so the row comparisons in the kernel never pick them.
    for (size_t s = 0; s < outs.size(); ++s) {
      seg.w[s] = static_cast<const W*>(outs[s].w->data);
      seg.y[s] = static_cast<float*>(outs[s].y.data);
      seg.y_ld[s] = outs[s].y.row_stride;
      rows += outs[s].w->out_features;
      seg.end[s] = rows;
    }
    for (size_t s = outs.size(); s < 3; ++s) seg.end[s] = rows;
    if (rows == 0) return;
    const unsigned blocks = grid_1d(rows, kGemvWarps);
    const int T = static_cast<int>(x.rows);
    if (vec && T == 1)
      launch_pdl(gemv_unroll() == 8 ? gemv_kernel<W, true, 1, 8> : gemv_kernel<W, true, 1>, blocks, 32 * kGemvWarps,
                 0, stream_, xp, x.row_stride, seg, in, T);
    else if (vec)
      launch_pdl(gemv_kernel<W, true, kGemvMaxTokens>, blocks, 32 * kGemvWarps, 0, stream_, xp, x.row_stride, seg, in,
                 T);
    else if (T == 1)
      launch_pdl(gemv_kernel<W, false, 1>, blocks, 32 * kGemvWarps, 0, stream_, xp, x.row_stride, seg, in, T);
    else
      launch_pdl(gemv_kernel<W, false, kGemvMaxTokens>, blocks, 32 * kGemvWarps, 0, stream_, xp, x.row_stride, seg, in,
                 T);
  });
  HEADINFER_CUDA_CHECK_LAUNCH();
  for (const LinearOut& o : outs)
    if (o.bias != nullptr) add_bias(*o.bias, o.y);
}

void CudaOps::linear_gated(const MatView& x, std::span<const LinearOut, 2> gate_up, Activation act,
                           const MatView& out) {
  const WeightView &wg = *gate_up[0].w, &wu = *gate_up[1].w;
  // Where gemv() would take gate and up in its vector kernel for one token: the fused kernel's
  // sums are that kernel's.
  const bool fused = x.rows == 1 && gemv_fits(x, gate_up) && gate_up[0].bias == nullptr && gate_up[1].bias == nullptr &&
                     wg.out_features == wu.out_features && x.cols % 8 == 0 && x.row_stride % 4 == 0 &&
                     pointer_alignment(x.data) >= 16 && pointer_alignment(wg.data) >= 16 &&
                     pointer_alignment(wu.data) >= 16 && out.dtype == DType::F32 && out.rows == 1 &&
                     out.cols == wg.out_features;
  if (!fused) {
    Ops::linear_gated(x, gate_up, act, out);
    return;
  }
  if (wg.out_features == 0) return;
  dispatch_dtype(wg.dtype, [&](auto tag) {
    using W = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<W, float>) {  // gemv_fits: 16-bit weights only
      const unsigned blocks = grid_1d(wg.out_features, kGemvWarps);
      auto* kernel = act == Activation::GeluTanh ? gemv_gated_kernel<W, true> : gemv_gated_kernel<W, false>;
      launch_pdl(kernel, blocks, 32 * kGemvWarps, 0, stream_, static_cast<const float*>(x.data),
                 static_cast<const W*>(wg.data), static_cast<const W*>(wu.data), static_cast<float*>(out.data),
                 wg.out_features, wg.in_features);
    }
  });
  HEADINFER_CUDA_CHECK_LAUNCH();
}

DType CudaOps::linear_input_dtype(int64_t n_tokens, DType weight_dtype) const {
  return weight_dtype != DType::F32 && n_tokens > kGemvMaxTokens ? weight_dtype : DType::F32;
}

MatView CudaOps::linear_input_scratch(int64_t rows, int64_t cols, DType dtype) {
  if (dtype == DType::F32) throw Error("cuda backend: linear_input_scratch is for 16-bit inputs");
  void* p = gemm_cast_.get(static_cast<size_t>(rows * cols) * dtype_size(dtype));
  return MatView{p, dtype, rows, cols, cols};
}

void CudaOps::linear_multi(const MatView& x, std::span<const LinearOut> outs) {
  if (x.dtype != DType::F32) {  // already in the weights' dtype: straight to the tensor cores
    for (const LinearOut& o : outs) linear_cast(x, *o.w, o.bias, o.y, nullptr, o.accumulate);
    return;
  }
  bool accumulate = false;
  for (const LinearOut& o : outs) accumulate = accumulate || o.accumulate;
  if (!accumulate && gemv_fits(x, outs)) {
    gemv(x, outs);
    return;
  }
  // The tensor-core path rounds x once for every weight of its dtype (q/k/v, gate/up share x).
  const void* x_cast = nullptr;
  for (const LinearOut& o : outs) {
    const bool cast_path = o.w->dtype != DType::F32 && x.rows > kGemvMaxTokens && o.w->dtype == outs[0].w->dtype;
    if (cast_path && x_cast == nullptr) x_cast = cast_input(x, o.w->dtype);
    linear_cast(x, *o.w, o.bias, o.y, cast_path ? x_cast : nullptr, o.accumulate);
    if (!cast_path) x_cast = nullptr;  // that call may have reused the cast scratch
  }
}

const void* CudaOps::cast_input(const MatView& x, DType dtype) {
  const int64_t n_tokens = x.rows, in = x.cols;
  void* x_cast = gemm_cast_.get(static_cast<size_t>(n_tokens * in) * dtype_size(dtype));
  const bool vec4 = in % 4 == 0 && x.row_stride % 4 == 0 && pointer_alignment(x.data) >= 16;
  const dim3 grid(static_cast<unsigned>((in + 4 * 256 - 1) / (4 * 256)), static_cast<unsigned>(n_tokens));
  dispatch_dtype(dtype, [&](auto tag) {
    using D = typename decltype(tag)::type;
    cast_rows_kernel<D><<<grid, 256, 0, stream_>>>(static_cast<const float*>(x.data), x.row_stride,
                                                    static_cast<D*>(x_cast), in, vec4);
  });
  HEADINFER_CUDA_CHECK_LAUNCH();
  return x_cast;
}

void CudaOps::linear(const MatView& x, const WeightView& w, const VecView* bias, const MatView& y) {
  linear_cast(x, w, bias, y, nullptr);
}

bool CudaOps::linear_accumulates(int64_t n_tokens, DType weight_dtype) const {
  return kResidualGemm && weight_dtype != DType::F32 && n_tokens > kGemvMaxTokens;
}

void CudaOps::linear_cast(const MatView& x, const WeightView& w, const VecView* bias, const MatView& y,
                          const void* x_cast, bool accumulate) {
  // A 16-bit y (the weights' dtype) only from x in that dtype, without bias: the GEMM rounds its
  // fp32 sums once, as torch's bf16 linear does.
  const bool y16 = y.dtype != DType::F32 && y.dtype == w.dtype && x.dtype == w.dtype && bias == nullptr;
  if ((y.dtype != DType::F32 && !y16) || (x.dtype != DType::F32 && x.dtype != w.dtype))
    throw Error("cuda backend: linear needs F32 activations (or x, and y without bias, in the weights' 16-bit dtype)");
  if (x.cols != w.in_features || y.cols != w.out_features || x.rows != y.rows)
    throw Error("cuda backend: linear shape mismatch");
  if (bias != nullptr && bias->n != w.out_features) throw Error("cuda backend: linear bias shape mismatch");
  const int64_t n_tokens = x.rows, in = w.in_features, out = w.out_features;
  // y += x W^T: the tensor-core GEMM with beta = 1 (C = D = y), whatever the knob says.
  if (accumulate && (bias != nullptr || y.dtype != DType::F32 || w.dtype == DType::F32 || n_tokens <= kGemvMaxTokens))
    throw Error("cuda backend: a linear adds into y only on the tensor-core path (16-bit weights, over " +
                std::to_string(kGemvMaxTokens) + " rows, F32 y, no bias)");
  const float beta = accumulate ? 1.0f : 0.0f;
  if (n_tokens == 0 || out == 0) return;
  if (x.dtype != DType::F32) {  // rounded to W's dtype by the op that made it
    lt_matmul(w.dtype, w.data, x.data, x.row_stride, y.data, y.dtype, y.row_stride, out, n_tokens, in, beta);
    if (bias != nullptr) add_bias(*bias, y);
    return;
  }
  auto* yp = static_cast<float*>(y.data);
  const auto* xp = static_cast<const float*>(x.data);
  if (w.dtype == DType::F32) {
    lt_matmul(DType::F32, w.data, xp, x.row_stride, yp, DType::F32, y.row_stride, out, n_tokens, in);
  } else if (n_tokens <= kGemvMaxTokens) {
    const LinearOut one{&w, nullptr, y};
    gemv(x, std::span<const LinearOut>(&one, 1));
  } else {
    // x [T, in] rounded to W's dtype, contiguous (ld = in); linear_multi passes it once cast.
    if (x_cast == nullptr) x_cast = cast_input(x, w.dtype);
    lt_matmul(w.dtype, w.data, x_cast, in, yp, DType::F32, y.row_stride, out, n_tokens, in, beta);
  }
  if (bias != nullptr) add_bias(*bias, y);
}

}  // namespace headinfer::cuda
