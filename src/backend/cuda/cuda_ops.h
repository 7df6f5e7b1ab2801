#pragma once
// The CUDA op set. Each op family defines its CudaOps methods in its own .cu file (gemm.cu,
// norm.cu, rope.cu, attention.cu, merge.cu, elementwise.cu); everything runs on one stream that
// the device owns, so ops are ordered without host synchronisation.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdlib>
#include <future>
#include <map>
#include <optional>
#include <vector>

#include "attention_cudnn.h"
#include "headinfer/backend.h"

namespace headinfer::cuda {

// Device memory that grows to the largest request seen and is then reused, counted against the
// device's budget like every other allocation. Grows only on a size not seen before, so a steady
// token loop never allocates.
class Scratch {
 public:
  Scratch(Device& device, cudaStream_t stream, const char* what) : device_(device), stream_(stream), what_(what) {}
  void* get(size_t bytes);
  // Gives the buffer back (the stream is synchronised first: queued kernels may still use it).
  void release();

 private:
  Device& device_;
  cudaStream_t stream_;
  const char* what_;
  DeviceBuffer buffer_;
};

// Scratch bounds for reserve_workspace: cuBLASLt's workspace (gemm.cu), and the largest attention
// scratch (split-KV partials, cuDNN's 16-bit Q/O and Stats) any call with at most `max_tasks`
// (query row, q head) tasks per kv head, over at most `max_kv_heads` kv heads, can need (attention.cu).
size_t gemm_workspace_bytes();
size_t sample_scratch_bytes(int64_t vocab);  // sample.cu
constexpr size_t kCudnnWorkspaceBytes = size_t{1} << 20;  // cuDNN SDPA's workspace (16-bit weights only)
constexpr int64_t kCudnnMinQueries = 16;  // attention calls with fewer query rows take the CUDA-core kernels
size_t attention_partials_max_bytes(int sm_count, int64_t max_tasks, int64_t max_kv_heads, int64_t head_dim);

class CudaOps final : public Ops {
 public:
  CudaOps(Device& device, cudaStream_t stream, cublasLtHandle_t lt, int sm_count)
      : stream_(stream),
        lt_(lt),
        sm_count_(sm_count),
        ids_(device, stream, "token ids"),
        gemm_cast_(device, stream, "linear input cast"),
        gemm_workspace_(device, stream, "cuBLASLt workspace"),
        attn_partials_(device, stream, "attention split-KV partials"),
        sample_scratch_(device, stream, "sampling scratch"),
        cudnn_(device, stream) {}

  void embedding(std::span<const int32_t> ids, const WeightView& table, const MatView& out) override;
  void embedding_device_id(const int32_t* device_id, const WeightView& table, const MatView& out) override;
  void rms_norm(const MatView& x, const VecView& weight, float eps, const MatView& out) override;
  void add_rms_norm(const MatView& x, const MatView& y, const VecView& weight, float eps,
                    const MatView& out) override;
  void linear(const MatView& x, const WeightView& w, const VecView* bias, const MatView& y) override;
  DType linear_input_dtype(int64_t n_tokens, DType weight_dtype) const override;
  MatView linear_input_scratch(int64_t rows, int64_t cols, DType dtype) override;
  void linear_multi(const MatView& x, std::span<const LinearOut> outs) override;
  bool linear_accumulates(int64_t n_tokens, DType weight_dtype) const override;
  void linear_gated(const MatView& x, std::span<const LinearOut, 2> gate_up, Activation act,
                    const MatView& out) override;
  void prepare_linear(const MatView& x, std::span<const LinearOut> outs) override;
  void wait_prepared() override;
  // cuBLASLt plans (one per new GEMM shape) made inline by a linear and found prepared ahead by
  // prepare_linear: the first-use test reads them.
  int64_t gemm_plans_inline() const { return gemm_plans_inline_; }
  int64_t gemm_plans_ahead() const { return gemm_plans_ahead_; }
  void rope(const MatView& x, int64_t n_heads, const RopeTable& rope, int64_t pos0) override;
  void rope_qk(const MatView& q, int64_t n_q_heads, const MatView& k, int64_t n_kv_heads, const RopeTable& table,
               int64_t pos0) override;
  void attention(const AttentionArgs& args) override;
  bool attention_out16(int64_t n_queries) const override;
  void prepare_attention(const AttentionArgs& args) override;
  void attention_merge(const MatView& out_a, const MatView& lse_a, const MatView& out_b, const MatView& lse_b,
                       int64_t head_dim) override;
  void silu_mul(const MatView& gate, const MatView& up, const MatView& out) override;
  void gelu_tanh_mul(const MatView& gate, const MatView& up, const MatView& out) override;
  void scale(const MatView& x, float s) override;
  void softcap(const MatView& x, float cap) override;
  void add(const MatView& x, const MatView& y) override;
  void copy(const MatView& src, const MatView& dst) override;
  void copy_heads(const MatView& src, int64_t n_heads, const MatView& dst, int64_t dst_head_stride) override;
  void copy_heads_kv(const MatView& k_src, const MatView& v_src, int64_t n_heads, const MatView& k_dst,
                     const MatView& v_dst, int64_t dst_head_stride) override;
  void argmax(const MatView& x, int32_t* out) override;
  bool samples_on_device() const override { return true; }
  void sample_token(const MatView& x, float temperature, int64_t top_k, float top_p, double uniform,
                    int32_t* out) override;
  void reserve_workspace(const OpsWorkspaceSizes& sizes) override;
  void release_workspace() override;
  size_t workspace_bytes(const OpsWorkspaceSizes& sizes) const override;
  ~CudaOps() override;

 private:
  // linear, with x already rounded to w's dtype in `x_cast` ([T, in] contiguous; nullptr: cast here);
  // accumulate: y += x W^T (the tensor-core path only, no bias).
  void linear_cast(const MatView& x, const WeightView& w, const VecView* bias, const MatView& y, const void* x_cast,
                   bool accumulate = false);
  // x rounded to `dtype` into the GEMM cast scratch ([T, in] contiguous); returns the scratch.
  const void* cast_input(const MatView& x, DType dtype);
  // cuBLASLt matmul y = x W^T (beta 1: y += x W^T, C = D = y, F32) for one shape, fp32
  // accumulation, y in y_type (F32, or ab_type): the heuristic's pick, cached by shape, dtypes,
  // beta, leading dimensions and pointer alignments (the heuristic's answer depends on all of them).
  void lt_matmul(DType ab_type, const void* w, const void* x, int64_t x_ld, void* y, DType y_type, int64_t y_ld,
                 int64_t m_out, int64_t n_tokens, int64_t k_in, float beta = 0.0f);
  // One lt_matmul call: y = x W^T, x already in ab's dtype.
  struct LtCall {
    DType ab;
    const void* w;
    const void* x;
    int64_t x_ld;
    void* y;
    DType y_type;
    int64_t y_ld, m_out, n_tokens, k_in;
    float beta;
  };
  using GemmKey = std::array<int64_t, 11>;
  using PlannedAlgo = std::shared_future<std::optional<cublasLtMatmulAlgo_t>>;
  // The lt_matmul calls linear_multi(x, outs) makes (none where the GEMV takes them).
  std::vector<LtCall> lt_calls(const MatView& x, std::span<const LinearOut> outs);
  // prepare_linear's work on the builder thread: after `before`, the heuristic's pick for `call`
  // and one run of it on gemm_builder_stream_ (nullopt where anything failed: planned inline then).
  std::optional<cublasLtMatmulAlgo_t> plan_elsewhere(const PlannedAlgo& before, const LtCall& call,
                                                     const GemmKey& key, void* workspace, int device);
  void add_bias(const VecView& bias, const MatView& y);
  // rms_norm of x (after x += *y where y is given) into out (norm.cu).
  void norm_rows(const MatView& x, const MatView* y, const VecView& weight, float eps, const MatView& out);
  // silu_mul (gelu false) or gelu_tanh_mul (elementwise.cu).
  void gated_mul(const MatView& gate, const MatView& up, const MatView& out, bool gelu);
  // reserve_workspace's allocations (their count is kept by reserve_workspace).
  void reserve_scratch(const OpsWorkspaceSizes& s);
  // The decode GEMV (gemm.cu): whether it takes these outputs in one launch, and that launch.
  bool gemv_fits(const MatView& x, std::span<const LinearOut> outs) const;
  void gemv(const MatView& x, std::span<const LinearOut> outs);
  // attention.cu's CUDA-core kernel for one kv head (f32 KV, and shapes the other paths decline).
  void attention_core(const AttentionArgs& a);

  cudaStream_t stream_;
  cublasLtHandle_t lt_;
  int sm_count_;
  Scratch ids_;             // I32 [T]: token ids uploaded for embedding
  int32_t* ids_pinned_ = nullptr;    // pinned I32 [T]: the ids' source while a step graph records
  int64_t ids_pinned_capacity_ = 0;
  Scratch gemm_cast_;       // BF16/F16 [T, in]: x rounded to the weight dtype for tensor-core GEMMs
                            // (also handed out by linear_input_scratch)
  Scratch gemm_workspace_;  // bytes: cuBLASLt's workspace
  Scratch attn_partials_;   // F32 [splits, tasks, head_dim + 1]: split-KV outputs and their LSE;
                            // for cuDNN prefill, 16-bit Q and O [T, heads * head_dim] and F32 Stats
  Scratch sample_scratch_;  // sample.cu: sorted candidates, weights, running sums, CUB's storage
  CudnnSdpa cudnn_;         // cuDNN handle and SDPA graphs per shape (prefill on 16-bit KV)
  std::map<GemmKey, cublasLtMatmulAlgo_t> gemm_algos_;
  // prepare_linear: plans queued on the builder thread (one at a time, each after the one before),
  // the one queued last, and the builder's own cuBLASLt handle and stream.
  std::map<GemmKey, PlannedAlgo> gemm_pending_;
  PlannedAlgo gemm_last_;
  cublasLtHandle_t gemm_builder_lt_ = nullptr;
  cudaStream_t gemm_builder_stream_ = nullptr;
  int64_t gemm_plans_inline_ = 0, gemm_plans_ahead_ = 0;
  bool trace_ = std::getenv("HEADINFER_TRACE") != nullptr;  // time each new GEMM shape's heuristic
  int64_t reservations_ = 0;  // models alive that reserved the scratch (release_workspace)
};

}  // namespace headinfer::cuda
