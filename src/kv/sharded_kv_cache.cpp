#include <algorithm>
#include <string>

#include "headinfer/error.h"
#include "headinfer/kv_cache.h"

namespace headinfer {

ShardedKvCache::ShardedKvCache(std::vector<std::unique_ptr<KvCache>> shards, int64_t kv_heads_per_shard)
    : shards_(std::move(shards)), kv_heads_per_shard_(kv_heads_per_shard) {
  if (shards_.empty() || kv_heads_per_shard_ < 1) throw Error("sharded KV cache: no shards or no heads");
  for (const auto& s : shards_) shard_ptrs_.push_back(s.get());
}

KvCache& ShardedKvCache::shard_of(int64_t kv_head, int64_t& local_head) const {
  const int64_t r = kv_head / kv_heads_per_shard_;
  if (kv_head < 0 || r >= static_cast<int64_t>(shards_.size()))
    throw Error("sharded KV cache: kv head " + std::to_string(kv_head) + " out of range");
  local_head = kv_head % kv_heads_per_shard_;
  return *shards_[static_cast<size_t>(r)];
}

void ShardedKvCache::attend(int64_t, const LayerAttention&) {
  throw Error("sharded KV cache: each shard attends in its own cache (ShardedModel::forward)");
}

void ShardedKvCache::reset() {
  for (auto& s : shards_) s->reset();
}

void ShardedKvCache::fill_random(int64_t n_positions, uint64_t seed) {
  for (size_t r = 0; r < shards_.size(); ++r) shards_[r]->fill_random(n_positions, seed ^ (0x9E3779B97F4A7C15ull * r));
}

void ShardedKvCache::truncate(int64_t n) {
  for (auto& s : shards_) s->truncate(n);
}

int64_t ShardedKvCache::kept_from(int64_t layer) const {
  int64_t first = 0;
  for (const auto& s : shards_) first = std::max(first, s->kept_from(layer));
  return first;
}

void ShardedKvCache::read_rows(int64_t layer, int64_t kv_head, int which, int64_t begin, int64_t end,
                               void* host_dst) {
  int64_t local = 0;
  KvCache& s = shard_of(kv_head, local);
  s.read_rows(layer, local, which, begin, end, host_dst);
}

void ShardedKvCache::write_rows(int64_t layer, int64_t kv_head, int which, int64_t begin, int64_t end,
                                const void* host_src) {
  int64_t local = 0;
  KvCache& s = shard_of(kv_head, local);
  s.write_rows(layer, local, which, begin, end, host_src);
}

void ShardedKvCache::prepare(int64_t pos0, int64_t n) {
  for (auto& s : shards_) s->prepare(pos0, n);
}

bool ShardedKvCache::prepare_slides(int64_t pos0, int64_t n) const {
  return std::any_of(shards_.begin(), shards_.end(), [&](const auto& s) { return s->prepare_slides(pos0, n); });
}

size_t ShardedKvCache::bytes_device() const {
  size_t n = 0;
  for (const auto& s : shards_) n += s->bytes_device();
  return n;
}

size_t ShardedKvCache::bytes_host() const {
  size_t n = 0;
  for (const auto& s : shards_) n += s->bytes_host();
  return n;
}

}  // namespace headinfer
