#include <string>

#include "headinfer/config.h"
#include "headinfer/error.h"

namespace headinfer {

ShardSlice shard_slice(const ModelConfig& c, int rank, int n_shards) {
  if (n_shards < 1) throw Error("shards: " + std::to_string(n_shards) + " (at least 1)");
  if (rank < 0 || rank >= n_shards)
    throw Error("shard rank " + std::to_string(rank) + " of " + std::to_string(n_shards));
  if (c.n_kv_heads % n_shards != 0)
    throw Error("cannot split " + std::to_string(c.n_kv_heads) + " kv heads over " + std::to_string(n_shards) +
                " devices: the number of devices must divide the kv heads");
  ShardSlice s;
  s.n_kv_heads = c.n_kv_heads / n_shards;
  s.kv_head0 = rank * s.n_kv_heads;
  s.ffn0 = c.intermediate_size * rank / n_shards;
  s.n_ffn = c.intermediate_size * (rank + 1) / n_shards - s.ffn0;
  return s;
}

ModelConfig shard_config(const ModelConfig& config, int rank, int n_shards) {
  const ShardSlice s = shard_slice(config, rank, n_shards);
  ModelConfig c = config;
  c.n_kv_heads = s.n_kv_heads;
  c.n_heads = s.n_kv_heads * config.group_size();
  c.intermediate_size = s.n_ffn;
  return c;
}

}  // namespace headinfer
