#pragma once
// A model split by kv head over N devices of one process (issue 16), one thread per device: the
// CPU stand-in for several GPUs of one host, and the driver the multi-GPU engine will use.
// Each shard is a Model (ModelShard) with its own KV cache; their o_proj and down_proj partials
// meet in a host all-reduce (headinfer/all_reduce.h).
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "headinfer/all_reduce.h"
#include "headinfer/model.h"

namespace headinfer {

class ShardedModel {
 public:
  // One shard per device, rank = index. Throws Error when the devices do not divide the kv heads.
  ShardedModel(const Checkpoint& checkpoint, std::span<Device* const> devices, const ForwardWorkspaceSizes& sizes);
  ~ShardedModel();  // stops the worker threads
  ShardedModel(const ShardedModel&) = delete;
  ShardedModel& operator=(const ShardedModel&) = delete;

  int n_shards() const { return static_cast<int>(shards_.size()); }
  Model& shard(int rank) { return *shards_.at(static_cast<size_t>(rank)); }
  const ModelConfig& config() const { return config_; }  // the whole model's

  // Model::forward on every shard at once (rank 0 on the calling thread, ranks 1.. on worker
  // threads started with the model, so the token loop starts no thread), shard r storing its heads' K/V in kvs[r] (a cache made
  // for shard(r).config()); the last token's logits (rank 0's) to `logits` ([vocab]). A shard
  // that throws stops the others at their next all-reduce, and its error is rethrown here.
  void forward(std::span<const int32_t> ids, int64_t pos0, std::span<KvCache* const> kvs, std::span<float> logits,
               int64_t call_end = 0);
  // The same, the logits left in rank 0's device memory (shard(0).read_logits / queue_argmax).
  void forward(std::span<const int32_t> ids, int64_t pos0, std::span<KvCache* const> kvs, int64_t call_end = 0);

 private:
  // Runs the current job on shard r; a failure is recorded (the first one wins) and aborts the
  // all-reduce so the other shards stop waiting.
  void run_shard(size_t r);
  void worker(size_t r);

  ModelConfig config_;
  std::unique_ptr<AllReduce> all_reduce_;
  std::vector<std::unique_ptr<Model>> shards_;

  // The forward the workers run next, published under mu_ with a new generation_.
  struct Job {
    std::span<const int32_t> ids;
    int64_t pos0 = 0;
    std::span<KvCache* const> kvs;
    int64_t call_end = 0;
  };
  Job job_;
  std::mutex mu_;
  std::condition_variable start_;  // a new generation_ (or stopping_)
  std::condition_variable done_;   // pending_ reached 0
  uint64_t generation_ = 0;
  int pending_ = 0;                // workers still running the current job
  bool stopping_ = false;
  std::exception_ptr first_error_;
  std::vector<std::jthread> workers_;  // ranks 1..N-1
};

}  // namespace headinfer
