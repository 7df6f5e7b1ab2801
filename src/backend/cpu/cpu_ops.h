#pragma once
// The CPU reference op set: fp32 math, weights of any checkpoint dtype widened on the fly.
#include "headinfer/backend.h"
#include "thread_pool.h"

namespace headinfer::cpu {

class CpuOps final : public Ops {
 public:
  explicit CpuOps(ThreadPool& pool) : pool_(pool) {}
  void embedding(std::span<const int32_t> ids, const WeightView& table, const MatView& out) override;
  void embedding_device_id(const int32_t* device_id, const WeightView& table, const MatView& out) override;
  void rms_norm(const MatView& x, const VecView& weight, float eps, const MatView& out) override;
  void linear(const MatView& x, const WeightView& w, const VecView* bias, const MatView& y) override;
  void rope(const MatView& x, int64_t n_heads, const RopeTable& rope, int64_t pos0) override;
  void attention(const AttentionArgs& args) override;
  void attention_merge(const MatView& out_a, const MatView& lse_a, const MatView& out_b, const MatView& lse_b,
                       int64_t head_dim) override;
  void silu_mul(const MatView& gate, const MatView& up, const MatView& out) override;
  void gelu_tanh_mul(const MatView& gate, const MatView& up, const MatView& out) override;
  void scale(const MatView& x, float s) override;
  void softcap(const MatView& x, float cap) override;
  void add(const MatView& x, const MatView& y) override;
  void copy(const MatView& src, const MatView& dst) override;
  void argmax(const MatView& x, int32_t* out) override;

 private:
  // One kv head (n_kv_heads = 1): tasks (query row, q head) spread over the pool.
  void attention_one_head(const AttentionArgs& args);
  ThreadPool& pool_;
};

// Dot product with a fixed summation order (8 interleaved partial sums, then a fixed tree), so
// results never depend on how work is split, and the compiler can vectorise it.
inline float dot_f32(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  for (int k = 0; i < n; ++i, ++k) acc[k] += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

}  // namespace headinfer::cpu
