#include "headinfer/sharded_model.h"

#include <exception>
#include <mutex>
#include <string>
#include <thread>

#include "headinfer/error.h"

namespace headinfer {

ShardedModel::ShardedModel(const Checkpoint& checkpoint, std::span<Device* const> devices,
                           const ForwardWorkspaceSizes& sizes)
    : config_(checkpoint.config()) {
  const int n = static_cast<int>(devices.size());
  shard_slice(config_, 0, n);  // the divisibility check, before any weight is copied
  all_reduce_ = make_host_all_reduce(n);
  for (int r = 0; r < n; ++r)
    shards_.push_back(std::make_unique<Model>(checkpoint, *devices[static_cast<size_t>(r)], sizes,
                                              ModelShard{r, n, all_reduce_.get()}));
}

void ShardedModel::forward(std::span<const int32_t> ids, int64_t pos0, std::span<KvCache* const> kvs,
                           std::span<float> logits, int64_t call_end) {
  forward(ids, pos0, kvs, call_end);
  shards_[0]->read_logits(logits);
}

void ShardedModel::forward(std::span<const int32_t> ids, int64_t pos0, std::span<KvCache* const> kvs,
                           int64_t call_end) {
  if (kvs.size() != shards_.size())
    throw Error("sharded forward: " + std::to_string(kvs.size()) + " KV caches for " +
                std::to_string(shards_.size()) + " shards");
  all_reduce_->reset();
  std::mutex mu;
  std::exception_ptr first_error;  // the first shard's failure; the others then fail in the all-reduce
  auto run = [&](size_t r) {
    try {
      shards_[r]->forward(ids, pos0, *kvs[r], call_end);
    } catch (...) {
      {
        std::lock_guard lock(mu);
        if (!first_error) first_error = std::current_exception();
      }
      all_reduce_->abort();
    }
  };
  {
    std::vector<std::jthread> workers;  // ranks 1.. on their own threads, rank 0 on this one
    for (size_t r = 1; r < shards_.size(); ++r) workers.emplace_back(run, r);
    run(0);
  }
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace headinfer
