#pragma once
// Prefill attention through cuDNN's fused SDPA (flash attention on the tensor cores), reached
// through cudnn-frontend. One object per CudaOps: its cuDNN handle, its graphs cached per shape and
// its workspace. Without cuDNN at build time (HEADINFER_WITH_CUDNN unset) run() always declines
// and the caller uses the CUDA-core kernel.
#include <cuda_runtime.h>

#include <memory>

#include "headinfer/backend.h"

namespace headinfer::cuda {

class Scratch;

class CudnnSdpa {
 public:
  CudnnSdpa(Device& device, cudaStream_t stream);
  ~CudnnSdpa();
  CudnnSdpa(const CudnnSdpa&) = delete;
  CudnnSdpa& operator=(const CudnnSdpa&) = delete;

  // Whether this build carries the cuDNN path at all.
  static bool available();
  // Bytes of `scratch` run() needs for n_tasks (query row, q head) pairs of head_dim: the 16-bit
  // copies of Q and O and the fp32 Stats.
  static size_t scratch_bytes(int64_t n_tasks, int64_t head_dim);
  // Runs `a` if cuDNN can compute exactly its mask (see attention_cudnn.cpp) for 16-bit KV; returns
  // false, having queued nothing, when it cannot. With a.out16 of the KV's dtype (row stride a
  // multiple of 8, 16-byte aligned) cuDNN writes O there and *wrote16 is set; otherwise O goes to
  // a.out (F32) and the caller rounds it into out16 where it asked for one.
  bool run(const AttentionArgs& a, Scratch& scratch, bool* wrote16 = nullptr);
  // Queues the build of the graph run(a) would use on the builder thread, unless it is built or
  // queued already (or run(a) would decline): a's shapes only, its memory is not touched.
  void prepare(const AttentionArgs& a);
  // Takes `bytes` of cuDNN workspace now (Ops::reserve_workspace) and from then on declines graphs
  // that need more, so the workspace never grows inside the token loop or past the planned bytes.
  void reserve_workspace(size_t bytes);
  // Gives the workspace back (CudaOps::release_workspace); graphs stay cached.
  void release_workspace();
  // Queues the build of a small causal prefill graph for this dtype, head size, GQA ratio and scale
  // on the builder thread (at start-up), so cuDNN's one-time set-up is not paid inside the first
  // prefill.
  void warm_up(DType kv_dtype, int64_t head_dim, int64_t q_heads_per_kv_head, float scale);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace headinfer::cuda
