#pragma once
// The KV interface the model talks to: one call per layer per chunk that stores the chunk's new
// K/V and returns the attention output. Where the KV lives (all on the device, or head blocks
// split across tiers and streamed) is the implementation's business, so replacing the simple
// cache with the head-wise store is local to kv/.
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "headinfer/backend.h"
#include "headinfer/config.h"

namespace headinfer {

struct LayerAttention {
  MatView q;      // F32 [T, n_heads * head_dim], RoPE applied
  MatView k_new;  // F32 [T, n_kv_heads * head_dim], RoPE applied: keys of positions pos0 .. pos0+T-1
  MatView v_new;  // F32 [T, n_kv_heads * head_dim]
  int64_t pos0 = 0;
  MatView out;    // F32 [T, n_heads * head_dim]
  MatView lse;    // F32 [T, n_heads], scratch for the log-sum-exp of each head
  // Optional (Ops::attention_out16): the output in 16 bits [T, n_heads * head_dim] (out is then
  // scratch), for every head, whatever its placement.
  MatView out16;
};

class KvCache {
 public:
  virtual ~KvCache() = default;
  virtual void attend(int64_t layer, const LayerAttention& args) = 0;
  // Positions the cache can hold.
  virtual int64_t capacity() const = 0;
  // Forgets all positions (the next chunk starts at position 0).
  virtual void reset() = 0;
  // Decode-only benchmarks: forgets all positions, then holds n_positions of random K/V (uniform
  // in [-1, 1), rounded to the KV dtype) in every head block, as if a prefill had written them;
  // the next chunk starts at n_positions. The values depend only on (seed, layer, kv head, K/V,
  // position, channel), so every placement holds the same ones. Throws Error when n_positions is
  // outside 0..capacity().
  virtual void fill_random(int64_t n_positions, uint64_t seed) = 0;

  // Prefix reuse: keeps positions [0, n) and forgets the rest, on every tier, without touching
  // the rows kept (no recomputation); the next chunk starts at n. Throws Error when n is outside
  // 0..capacity(). A sliding-window layer needs only its window, so it may no longer hold the
  // early positions: the caller checks kept_from first (Engine::truncate).
  virtual void truncate(int64_t n) = 0;
  // The first position whose K/V layer `layer` still holds: 0 for a layer that keeps the whole
  // context (unless a snapshot without the early rows was written into it), and for a layer that
  // keeps only its window, the oldest position it still has (at most the first key the next
  // chunk sees).
  virtual int64_t kept_from(int64_t layer) const = 0;
  // KV snapshots (runtime/kv_snapshot.cpp): the element type of the head blocks, and one head's
  // K (which 0) or V (1) rows [begin, end) copied to or from host memory as [end - begin,
  // head_dim] of kv_dtype(), contiguous, wherever the block lives. Rows read must be held
  // (kept_from(layer) <= begin); a write of rows [begin, end) may move a window layer's block,
  // so write every head of a layer with the same range (kept_from(layer) is then begin at most).
  // Synchronous: they wait for the work in flight first, and a write leaves no ring slot or
  // staging copy holding stale rows. Not for the token loop.
  virtual DType kv_dtype() const = 0;
  virtual void read_rows(int64_t layer, int64_t kv_head, int which, int64_t begin, int64_t end, void* host_dst) = 0;
  virtual void write_rows(int64_t layer, int64_t kv_head, int which, int64_t begin, int64_t end,
                          const void* host_src) = 0;
  // Decode steps as device graphs: makes every layer's window blocks ready for a chunk of n
  // positions at pos0 (HeadStore::make_room) before the step is recorded, so a recording never
  // holds a block's move (attend() makes the same room itself; then it is a no-op).
  virtual void prepare(int64_t pos0, int64_t n) {}
  // Whether prepare(pos0, n) would slide a window block (forgetting the positions before its
  // window): a step queued ahead and then dropped must not cost the context a later cut keeps.
  virtual bool prepare_slides(int64_t pos0, int64_t n) const { return false; }
  // Before the first prefill (Engine, from EngineOptions::prompt_tokens): plans the attention calls
  // of a first chunk of n_tokens positions (Ops::prepare_attention) for the blocks that stay on the
  // device; streamed groups are planned when they are first used. Changes nothing a forward sees.
  virtual void prepare_first_chunk(int64_t n_tokens) {}
  // KV bytes held on the device and in host memory (metrics); host bytes are those allocated.
  virtual size_t bytes_device() const = 0;
  virtual size_t bytes_host() const = 0;
};

// Where a store keeps kv heads h0 .. h0 + n_heads - 1 of a layer: K and V blocks of rows
// head_dim elements apart, [rows, head_dim] of `dtype` each, row r holding position origin + r;
// head i's K at k + i * head_stride elements, its V at v + the same.
struct HeadBlocks {
  void* k = nullptr;
  void* v = nullptr;
  int64_t head_stride = 0;
  int64_t origin = 0;
  DType dtype = DType::F32;
};

// Writes the chunk's new K/V rows (positions pos0 .. pos0 + T - 1, which the blocks must have room
// for) and attends each head's query heads over the keys its chunk sees, [first visible key,
// pos0 + T) (a sliding-window layer's window, the whole past otherwise, which the blocks must
// hold), into their columns of args.out / args.lse, with one copy per K/V and one attention call
// for all the heads. The one place every KV store attends, so every placement runs the same ops
// over the same keys (a head's numbers never depend on how heads are grouped: Ops::attention).
void store_and_attend_heads(Ops& ops, const ModelConfig& config, int64_t layer, int64_t h0, int64_t n_heads,
                            const LayerAttention& args, const HeadBlocks& blocks);
// The attention call store_and_attend_heads would make for the first chunk of a prompt
// (n_tokens positions from 0) handed to Ops::prepare_attention: its plan is made, nothing runs.
void prepare_heads_attention(Ops& ops, const ModelConfig& config, int64_t layer, int64_t h0, int64_t n_heads,
                             int64_t n_tokens, const HeadBlocks& blocks);

// The caches of N devices the kv heads are split over (issue 16) seen as one: shard r's cache holds
// kv heads [r * H / N, (r + 1) * H / N) of every layer, and read_rows / write_rows (snapshots) take
// the model's kv head numbers. attend() is not for it: each shard attends in its own cache
// (ShardedModel). fill_random fills each shard from the seed mixed with its rank, so the values
// are not those of one device (bench only).
class ShardedKvCache final : public KvCache {
 public:
  ShardedKvCache(std::vector<std::unique_ptr<KvCache>> shards, int64_t kv_heads_per_shard);
  std::span<KvCache* const> shards() const { return shard_ptrs_; }

  void attend(int64_t layer, const LayerAttention& args) override;
  int64_t capacity() const override { return shard_ptrs_[0]->capacity(); }
  void reset() override;
  void fill_random(int64_t n_positions, uint64_t seed) override;
  void truncate(int64_t n) override;
  int64_t kept_from(int64_t layer) const override;
  DType kv_dtype() const override { return shard_ptrs_[0]->kv_dtype(); }
  void read_rows(int64_t layer, int64_t kv_head, int which, int64_t begin, int64_t end, void* host_dst) override;
  void write_rows(int64_t layer, int64_t kv_head, int which, int64_t begin, int64_t end, const void* host_src) override;
  void prepare(int64_t pos0, int64_t n) override;
  bool prepare_slides(int64_t pos0, int64_t n) const override;
  size_t bytes_device() const override;
  size_t bytes_host() const override;

 private:
  KvCache& shard_of(int64_t kv_head, int64_t& local_head) const;
  std::vector<std::unique_ptr<KvCache>> shards_;
  std::vector<KvCache*> shard_ptrs_;
  int64_t kv_heads_per_shard_ = 0;
};

// Every head block on the device, K and V [capacity, head_dim] per (layer, kv head), F32.
std::unique_ptr<KvCache> make_simple_kv_cache(Device& device, const ModelConfig& config, int64_t capacity);

}  // namespace headinfer
