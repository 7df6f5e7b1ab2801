#include <algorithm>
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
  void reset() override { std::fill(written_from_.begin(), written_from_.end(), 0); }

  void fill_random(int64_t n_positions, uint64_t seed) override {
    if (n_positions < 0 || n_positions > capacity_)
      throw Error("random KV fill: " + std::to_string(n_positions) + " positions, KV cache holds " +
                  std::to_string(capacity_) + " (raise --ctx)");
    reset();
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

  void truncate(int64_t n) override {
    if (n < 0 || n > capacity_)
      throw Error("KV truncate to " + std::to_string(n) + " positions: KV cache holds " + std::to_string(capacity_));
    // Nothing to drop: attention reads only rows [0, pos0 + T), and the next chunk overwrites from n.
  }
  int64_t kept_from(int64_t layer) const override { return written_from_.at(static_cast<size_t>(layer)); }
  DType kv_dtype() const override { return DType::F32; }
  void read_rows(int64_t layer, int64_t kv_head, int which, int64_t begin, int64_t end, void* host_dst) override {
    device_.read_to_host(host_dst, row(layer, kv_head, which, begin, end), rows_bytes(end - begin));
  }
  void write_rows(int64_t layer, int64_t kv_head, int which, int64_t begin, int64_t end,
                  const void* host_src) override {
    device_.write_from_host(row(layer, kv_head, which, begin, end), host_src, rows_bytes(end - begin));
    auto& from = written_from_[static_cast<size_t>(layer)];
    from = std::max(from, begin);  // the rows before a snapshot's first were never written
  }
  size_t bytes_device() const override { return 2 * k_blocks_.size() * rows_bytes(capacity_); }
  size_t bytes_host() const override { return 0; }

  void attend(int64_t layer, const LayerAttention& a) override {
    const int64_t n_new = a.q.rows;
    if (a.pos0 + n_new > capacity_)
      throw Error("context full: " + std::to_string(a.pos0 + n_new) + " positions needed, KV cache holds " +
                  std::to_string(capacity_) + " (raise --ctx)");
    Ops& ops = device_.ops();
    for (int64_t h = 0; h < config_.n_kv_heads; ++h) {
      const size_t block = static_cast<size_t>(layer * config_.n_kv_heads + h);
      store_and_attend_heads(ops, config_, layer, h, 1, a,
                             HeadBlocks{k_blocks_[block].data(), v_blocks_[block].data(), 0, 0, DType::F32});
    }
  }

 private:
  size_t rows_bytes(int64_t n) const {
    if (n < 0 || n > capacity_) throw Error("KV rows: " + std::to_string(n) + " outside 0.." + std::to_string(capacity_));
    return static_cast<size_t>(n) * static_cast<size_t>(config_.head_dim) * sizeof(float);
  }
  // Row `begin` of a head's K or V block, for rows [begin, end).
  void* row(int64_t layer, int64_t kv_head, int which, int64_t begin, int64_t end) {
    if (layer < 0 || layer >= config_.n_layers || kv_head < 0 || kv_head >= config_.n_kv_heads)
      throw Error("KV rows: head block out of range");
    if (begin < 0 || begin > end || end > capacity_)
      throw Error("KV rows " + std::to_string(begin) + ".." + std::to_string(end) + " outside 0.." +
                  std::to_string(capacity_));
    const size_t b = static_cast<size_t>(layer * config_.n_kv_heads + kv_head);
    return static_cast<char*>(which == 0 ? k_blocks_[b].data() : v_blocks_[b].data()) + rows_bytes(begin);
  }

  Device& device_;
  const ModelConfig config_;
  const int64_t capacity_;
  std::vector<DeviceBuffer> k_blocks_;
  std::vector<DeviceBuffer> v_blocks_;
  std::vector<int64_t> written_from_ = std::vector<int64_t>(static_cast<size_t>(config_.n_layers), 0);  // [n_layers]
};

}  // namespace

namespace {

// The attention call store_and_attend_heads makes for a chunk of a.q.rows positions at a.pos0.
AttentionArgs heads_attention_args(const ModelConfig& config, int64_t layer, int64_t h0, int64_t n_heads,
                                   const LayerAttention& a, const HeadBlocks& blocks) {
  const int64_t d = config.head_dim;
  const int64_t gs = config.group_size();
  const int64_t n_new = a.q.rows;
  const int64_t first = config.first_visible_key(layer, a.pos0);
  if (first < blocks.origin) throw Error("KV store: the keys a chunk sees start before the rows the store holds");
  const size_t e = dtype_size(blocks.dtype);
  auto row = [&](void* base, int64_t pos) { return static_cast<char*>(base) + static_cast<size_t>((pos - blocks.origin) * d) * e; };
  // Views with no memory (prepare_heads_attention) keep their shapes and stay null.
  auto cols = [](const MatView& m, int64_t c0, int64_t n) {
    return m.data != nullptr ? m.slice_cols(c0, n) : MatView{nullptr, m.dtype, m.rows, n, m.row_stride};
  };
  AttentionArgs args;
  args.q = cols(a.q, h0 * gs * d, n_heads * gs * d);
  // Keys [first, pos0 + T) only: what the chunk sees, the same run whether the store keeps the
  // whole context or just the window.
  args.kv = KvHeadView{row(blocks.k, first), row(blocks.v, first), blocks.dtype, d};
  args.n_keys = a.pos0 + n_new - first;
  args.head_dim = d;
  args.n_q_heads = gs;
  args.n_kv_heads = n_heads;
  args.layer_kv_heads = config.n_kv_heads;
  args.kv_head_stride = blocks.head_stride;
  args.q_pos0 = a.pos0;
  args.k_pos0 = first;
  args.window = config.window(layer);
  args.scale = config.attention_scale();  // transformers: head_dim (or query_pre_attn_scalar) ** -0.5
  args.softcap = config.attn_softcap;
  // store_and_attend_heads queues the copy of the chunk's rows right before this call; every key
  // before them is already in place.
  args.settled_keys = a.pos0 - first;
  args.out = cols(a.out, h0 * gs * d, n_heads * gs * d);
  args.lse = cols(a.lse, h0 * gs, n_heads * gs);
  if (a.out16.data != nullptr) args.out16 = a.out16.slice_cols(h0 * gs * d, n_heads * gs * d);
  return args;
}

}  // namespace

void store_and_attend_heads(Ops& ops, const ModelConfig& config, int64_t layer, int64_t h0, int64_t n_heads,
                            const LayerAttention& a, const HeadBlocks& blocks) {
  const int64_t d = config.head_dim;
  const AttentionArgs args = heads_attention_args(config, layer, h0, n_heads, a, blocks);
  const size_t e = dtype_size(blocks.dtype);
  auto row = [&](void* base, int64_t pos) { return static_cast<char*>(base) + static_cast<size_t>((pos - blocks.origin) * d) * e; };
  ops.copy_heads_kv(a.k_new.slice_cols(h0 * d, n_heads * d), a.v_new.slice_cols(h0 * d, n_heads * d), n_heads,
                    MatView{row(blocks.k, a.pos0), blocks.dtype, a.q.rows, d, d},
                    MatView{row(blocks.v, a.pos0), blocks.dtype, a.q.rows, d, d}, blocks.head_stride);
  ops.attention(args);
}

void prepare_heads_attention(Ops& ops, const ModelConfig& config, int64_t layer, int64_t h0, int64_t n_heads,
                             int64_t n_tokens, const HeadBlocks& blocks) {
  // Shapes only: views of n_tokens rows and no memory (the call is planned, never run).
  LayerAttention a;
  a.q = MatView{nullptr, DType::F32, n_tokens, config.q_dim(), config.q_dim()};
  a.out = a.q;
  a.lse = MatView{nullptr, DType::F32, n_tokens, config.n_heads, config.n_heads};
  a.pos0 = 0;
  ops.prepare_attention(heads_attention_args(config, layer, h0, n_heads, a, blocks));
}

std::unique_ptr<KvCache> make_simple_kv_cache(Device& device, const ModelConfig& config, int64_t capacity) {
  return std::make_unique<SimpleKvCache>(device, config, capacity);
}

}  // namespace headinfer
