#include "headinfer/sharded_model.h"

#include <exception>
#include <string>

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
  try {
    for (size_t r = 1; r < shards_.size(); ++r) workers_.emplace_back([this, r] { worker(r); });
  } catch (...) {  // a thread that could not start: stop those that did (no destructor runs)
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    start_.notify_all();
    workers_.clear();
    throw;
  }
}

ShardedModel::~ShardedModel() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  start_.notify_all();
  workers_.clear();  // joins
}

void ShardedModel::worker(size_t r) {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      start_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
    }
    run_shard(r);
    std::lock_guard lock(mu_);
    if (--pending_ == 0) done_.notify_all();
  }
}

void ShardedModel::run_shard(size_t r) {
  try {
    shards_[r]->forward(job_.ids, job_.pos0, *job_.kvs[r], job_.call_end);
  } catch (...) {
    {
      std::lock_guard lock(mu_);
      if (!first_error_) first_error_ = std::current_exception();
    }
    all_reduce_->abort();
  }
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
  all_reduce_->reset();  // no shard is inside it between calls
  {
    std::lock_guard lock(mu_);
    job_ = Job{ids, pos0, kvs, call_end};
    first_error_ = nullptr;
    pending_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  start_.notify_all();
  run_shard(0);
  std::exception_ptr error;
  {
    std::unique_lock lock(mu_);
    done_.wait(lock, [&] { return pending_ == 0; });
    error = first_error_;
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace headinfer
