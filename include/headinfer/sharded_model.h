#pragma once
// A model split by kv head over N devices of one process (issue 16), one thread per device: the
// CPU stand-in for several GPUs of one host, and the driver the multi-GPU engine will use.
// Each shard is a Model (ModelShard) with its own KV cache; their o_proj and down_proj partials
// meet in a host all-reduce (headinfer/all_reduce.h).
#include <memory>
#include <span>
#include <vector>

#include "headinfer/all_reduce.h"
#include "headinfer/model.h"

namespace headinfer {

class ShardedModel {
 public:
  // One shard per device, rank = index. Throws Error when the devices do not divide the kv heads.
  ShardedModel(const Checkpoint& checkpoint, std::span<Device* const> devices, const ForwardWorkspaceSizes& sizes);

  int n_shards() const { return static_cast<int>(shards_.size()); }
  Model& shard(int rank) { return *shards_.at(static_cast<size_t>(rank)); }
  const ModelConfig& config() const { return config_; }  // the whole model's

  // Model::forward on every shard at once, shard r storing its heads' K/V in kvs[r] (a cache made
  // for shard(r).config()); the last token's logits (rank 0's) to `logits` ([vocab]). A shard
  // that throws stops the others at their next all-reduce, and its error is rethrown here.
  void forward(std::span<const int32_t> ids, int64_t pos0, std::span<KvCache* const> kvs, std::span<float> logits,
               int64_t call_end = 0);
  // The same, the logits left in rank 0's device memory (shard(0).read_logits / read_argmax).
  void forward(std::span<const int32_t> ids, int64_t pos0, std::span<KvCache* const> kvs, int64_t call_end = 0);

 private:
  ModelConfig config_;
  std::unique_ptr<AllReduce> all_reduce_;
  std::vector<std::unique_ptr<Model>> shards_;
};

}  // namespace headinfer
