#include <cmath>
#include <string>
#include <vector>

#include "headinfer/error.h"
#include "headinfer/kv_cache.h"
#include "random_kv_fill.h"

namespace headinfer {
namespace {

class SimpleKvCache final : public KvCache {
 public:
  SimpleKvCache(Device& device, const ModelConfig& config, int64_t capacity)
      : device_(device), config_(config), capacity_(capacity) {
    const size_t block_bytes = static_cast<size_t>(capacity) * static_cast<size_t>(config.head_dim) * sizeof(float);
    const size_t n_blocks = static_cast<size_t>(config.n_layers * config.n_kv_heads);
    // One K and one V block per (layer, kv head): [capacity, head_dim] F32, contiguous, so a
    // head's keys are a single run the attention op reads in place.
    k_blocks_.reserve(n_blocks);
    v_blocks_.reserve(n_blocks);
    for (size_t i = 0; i < n_blocks; ++i) {
      k_blocks_.emplace_back(device, block_bytes, "KV cache (K)");
      v_blocks_.emplace_back(device, block_bytes, "KV cache (V)");
    }
  }

  int64_t capacity() const override { return capacity_; }
  void reset() override {}

  void fill_random(int64_t n_positions, uint64_t seed) override {
    if (n_positions < 0 || n_positions > capacity_)
      throw Error("random KV fill: " + std::to_string(n_positions) + " positions, KV cache holds " +
                  std::to_string(capacity_) + " (raise --ctx)");
    // Every block is device memory: generated on the host in 64 MiB pieces and copied over.
    std::vector<char> staging(size_t{64} << 20);
    for (int64_t l = 0; l < config_.n_layers; ++l)
      for (int64_t h = 0; h < config_.n_kv_heads; ++h) {
        const size_t block = static_cast<size_t>(l * config_.n_kv_heads + h);
        fill_random_device_block(device_, {k_blocks_[block].data(), l, h, 0}, DType::F32, n_positions,
                                 config_.head_dim, seed, staging);
        fill_random_device_block(device_, {v_blocks_[block].data(), l, h, 1}, DType::F32, n_positions,
                                 config_.head_dim, seed, staging);
      }
  }

  void attend(int64_t layer, const LayerAttention& a) override {
    const int64_t n_new = a.q.rows;
    if (a.pos0 + n_new > capacity_)
      throw Error("context full: " + std::to_string(a.pos0 + n_new) + " positions needed, KV cache holds " +
                  std::to_string(capacity_) + " (raise --ctx)");
    Ops& ops = device_.ops();
    for (int64_t h = 0; h < config_.n_kv_heads; ++h) {
      const size_t block = static_cast<size_t>(layer * config_.n_kv_heads + h);
      store_and_attend_heads(ops, config_, layer, h, 1, a, k_blocks_[block].data(), v_blocks_[block].data(), 0,
                             DType::F32);
    }
  }

 private:
  Device& device_;
  const ModelConfig config_;
  const int64_t capacity_;
  std::vector<DeviceBuffer> k_blocks_;
  std::vector<DeviceBuffer> v_blocks_;
};

}  // namespace

void store_and_attend_heads(Ops& ops, const ModelConfig& config, int64_t layer, int64_t h0, int64_t n_heads,
                            const LayerAttention& a, void* k_base, void* v_base, int64_t head_stride,
                            DType kv_dtype) {
  const int64_t d = config.head_dim;
  const int64_t gs = config.group_size();
  const int64_t n_new = a.q.rows;
  const size_t at = static_cast<size_t>(a.pos0 * d) * dtype_size(kv_dtype);
  ops.copy_heads(a.k_new.slice_cols(h0 * d, n_heads * d), n_heads,
                 MatView{static_cast<char*>(k_base) + at, kv_dtype, n_new, d, d}, head_stride);
  ops.copy_heads(a.v_new.slice_cols(h0 * d, n_heads * d), n_heads,
                 MatView{static_cast<char*>(v_base) + at, kv_dtype, n_new, d, d}, head_stride);
  AttentionArgs args;
  args.q = a.q.slice_cols(h0 * gs * d, n_heads * gs * d);
  args.kv = KvHeadView{k_base, v_base, kv_dtype, d};
  args.n_keys = a.pos0 + n_new;
  args.head_dim = d;
  args.n_q_heads = gs;
  args.n_kv_heads = n_heads;
  args.layer_kv_heads = config.n_kv_heads;
  args.kv_head_stride = head_stride;
  args.q_pos0 = a.pos0;
  args.k_pos0 = 0;
  args.window = config.layer_window[static_cast<size_t>(layer)];
  args.scale = static_cast<float>(std::pow(static_cast<double>(d), -0.5));  // transformers: head_dim**-0.5
  args.out = a.out.slice_cols(h0 * gs * d, n_heads * gs * d);
  args.lse = a.lse.slice_cols(h0 * gs, n_heads * gs);
  ops.attention(args);
}

std::unique_ptr<KvCache> make_simple_kv_cache(Device& device, const ModelConfig& config, int64_t capacity) {
  return std::make_unique<SimpleKvCache>(device, config, capacity);
}

}  // namespace headinfer
