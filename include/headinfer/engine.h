#pragma once
// Engine: a model, its KV store and the prefill/decode loop; generate() adds sampling, stop
// conditions and timings.
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "headinfer/backend.h"
#include "headinfer/checkpoint.h"
#include "headinfer/head_store.h"
#include "headinfer/kv_cache.h"
#include "headinfer/model.h"
#include "headinfer/sampler.h"

namespace headinfer {

struct EngineOptions {
  int64_t context = 0;      // positions the KV store holds (required, > 0)
  // Prefill tokens per forward call and MLP rows at once; 0: the planner chooses them for the
  // device's memory cap and the context (make_plan). Engine::options() holds the chosen values.
  int64_t chunk = 0;
  int64_t mlp_chunk = 0;
  KvPlacementOptions kv;    // where head blocks live (offload mode, caps, group size)
  // Decode steps as one device graph where the device has them and every head block is resident
  // (streamed and hybrid steps use copy streams and host tasks, which a graph does not record).
  bool step_graphs = true;
};

class Engine {
 public:
  Engine(const Checkpoint& checkpoint, Device& device, const EngineOptions& options);

  const ModelConfig& config() const { return model_.config(); }
  int64_t context() const { return options_.context; }
  // The options as resolved: chunk and mlp_chunk as chosen, the KV dtype as the device keeps it.
  const EngineOptions& options() const { return options_; }
  int64_t n_past() const { return n_past_; }
  Model& model() { return model_; }
  const KvCache& kv_cache() const { return *kv_; }

  // Feeds tokens (in chunks) and returns the last token's logits ([vocab], valid until the next
  // call). `progress(done, total)` is called after each chunk when given.
  std::span<const float> prefill(std::span<const int32_t> ids,
                                 const std::function<void(int64_t, int64_t)>& progress = {});
  // One decode step: the logits of the new position ([vocab], valid until the next call), or only
  // their argmax, computed on the device (the greedy token, without reading the logits back).
  std::span<const float> decode(int32_t id);
  int32_t decode_greedy(int32_t id);
  // A sampled token (sampler's temperature > 0), drawn on the device where it can, else on the
  // host from the logits.
  int32_t decode_sampled(int32_t id, Sampler& sampler);
  // Whether decode steps run as device graphs (EngineOptions::step_graphs, the device and the
  // placement allowing it; off for good after a recording fails).
  bool step_graphs() const { return graphs_; }
  void reset();
  // Decode-only benchmarks: replaces the whole context with n_positions of random K/V
  // (KvCache::fill_random) instead of a prefill, so the next decode runs at position n_positions.
  // Throws Error when n_positions is outside 0..context().
  void fill_random_context(int64_t n_positions, uint64_t seed);

 private:
  EngineOptions options_;
  Model model_;
  std::unique_ptr<KvCache> kv_;
  // Queues the forward of one decode step (recorded as a graph when graphs_ is on).
  void step(int32_t id);

  std::vector<float> logits_;  // host [vocab]
  int64_t n_past_ = 0;
  bool graphs_ = false;
};

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  bool ignore_eos = false;
  std::vector<int64_t> eos_ids;  // stop ids; empty: the checkpoint config's eos_token_ids
  SamplerOptions sampling;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (the eos that stopped generation included)
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;  // for tokens after the first
  bool stopped_at_eos = false;
  bool stopped_at_context = false;
  double decode_tokens_per_second() const;
};

struct GenerateCallbacks {
  std::function<void(int32_t)> on_token;                        // each sampled id, as it comes
  std::function<void(std::span<const float>)> on_logits;        // logits each token was sampled from
  std::function<void(int64_t, int64_t)> on_prefill_progress;    // (tokens done, total)
};

GenerateResult generate(Engine& engine, std::span<const int32_t> prompt, const GenerateOptions& options,
                        const GenerateCallbacks& callbacks = {});

}  // namespace headinfer
