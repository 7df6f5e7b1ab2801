#pragma once
// Engine: a model, its KV store and the prefill/decode loop; generate() adds sampling, stop
// conditions and timings.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "headinfer/backend.h"
#include "headinfer/checkpoint.h"
#include "headinfer/error.h"
#include "headinfer/head_store.h"
#include "headinfer/kv_cache.h"
#include "headinfer/model.h"
#include "headinfer/sampler.h"
#include "headinfer/sharded_model.h"

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
  // The first prompt's length where the caller knows it (0: not known). The attention plans of its
  // first chunk (the cuDNN graphs) are then built while the weights are copied to the device,
  // instead of inside the first prefill. Any prompt may still follow; nothing else depends on it.
  int64_t prompt_tokens = 0;
};

class Engine {
 public:
  Engine(const Checkpoint& checkpoint, Device& device, const EngineOptions& options);
  // The model split by kv head over several devices (issue 16): shard r on devices[r], each with
  // its own planned KV cache (options' gpu_mem per device, host_mem shared), one thread per device
  // in each forward, a host all-reduce between them. One device is the constructor above.
  // model() is then shard 0 (it holds the logits); step graphs are off.
  Engine(const Checkpoint& checkpoint, std::span<Device* const> devices, const EngineOptions& options);

  const ModelConfig& config() const { return config_; }  // the whole model's
  int n_devices() const { return sharded_ ? sharded_->n_shards() : 1; }
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
  // `ahead`: the caller will most likely call decode_greedy next with the token this returns. The
  // step for that token is then queued on the device before this one's token is read (its input
  // is the device's argmax, which no host reads first), so the device does not wait for the host
  // between steps (its graph is recorded while this step runs). The next decode_greedy with that
  // token counts it; any other call drops it (its K/V row is written again by whatever runs at
  // that position). Queued only where every head block is on one device and no window block
  // would slide for it; the results are the same bits either way.
  int32_t decode_greedy(int32_t id, bool ahead = false);
  // A sampled token (sampler's temperature > 0), drawn on the device where it can, else on the
  // host from the logits. `ahead` as decode_greedy's, where the device draws: the queued step's
  // draw is queued with it (the sampler's next uniform, in the order one step at a time takes
  // them), and counted by the next decode_sampled with that token and the same sampler. A dropped
  // step's uniform is spent.
  int32_t decode_sampled(int32_t id, Sampler& sampler, bool ahead = false);
  // Whether decode steps run as device graphs (EngineOptions::step_graphs, the device and the
  // placement allowing it; off for good after a recording fails).
  bool step_graphs() const { return graphs_; }
  void reset();

  // Prefix reuse (the server's kept conversation). The ids whose K/V the cache holds, in order
  // (empty after fill_random_context, whose positions have no ids).
  std::span<const int32_t> ids() const { return ids_; }
  // Keeps the longest common prefix of the held ids and `ids`, at most ids.size() - 1 positions
  // (so a prefill of the rest yields the logits after the last id), and forgets the KV beyond it
  // on every tier without recomputing anything. Returns the positions kept: 0 when the prefix is
  // shorter than min_kept_prefix() (the whole prompt is then recomputed).
  int64_t keep_common_prefix(std::span<const int32_t> ids);
  // Keeps positions [0, n) (n <= n_past(), and n == 0 or n >= min_kept_prefix()). Throws Error
  // otherwise.
  void truncate(int64_t n);
  // The shortest prefix n > 0 that truncate keeps: a sliding-window layer keeps only its window,
  // so a cut back to n needs its positions from n - W + 1 on; a shorter one is recomputed from the
  // start instead (keep_common_prefix then keeps nothing). 0 while every layer holds everything.
  int64_t min_kept_prefix() const;

  // KV snapshots (runtime/kv_snapshot.cpp): the held positions of every tier, their ids, the
  // model's identity and the plan, with a header and per-section checksums. save_kv writes a
  // temporary file, fsyncs it and renames it over `path`, so it never leaves a partial file.
  // load_kv replaces the held context; the file may come from any placement of the same model
  // and KV dtype. Both throw Error naming the file (another model, truncated, bad checksum,
  // longer than the context). A file found bad before any K/V is read leaves the held context as
  // it was; one found bad while reading K/V (a section's checksum) leaves an empty context.
  struct SnapshotStats {
    int64_t positions = 0;
    uint64_t bytes = 0;
    double seconds = 0.0;
  };
  SnapshotStats save_kv(const std::filesystem::path& path);
  SnapshotStats load_kv(const std::filesystem::path& path);
  // Names the weights (config, tensor names, shapes, dtypes and a sample of their bytes) as hex.
  const std::string& model_id() const { return model_id_; }

  // Decode-only benchmarks: replaces the whole context with n_positions of random K/V
  // (KvCache::fill_random) instead of a prefill, so the next decode runs at position n_positions.
  // Throws Error when n_positions is outside 0..context().
  void fill_random_context(int64_t n_positions, uint64_t seed);

 private:
  EngineOptions options_;
  ModelConfig config_;
  std::unique_ptr<ShardedModel> sharded_;  // several devices; else own_model_
  std::unique_ptr<Model> own_model_;
  Model& model_;                           // own_model_ or shard 0
  std::unique_ptr<KvCache> kv_;            // a ShardedKvCache with several devices
  // Queues the forward of one decode step (recorded as a graph when graphs_ is on).
  void step(int32_t id);
  // Queues the forward of one token at n_past_ without counting it: *id, or the device's pick of
  // the last step (its argmax or draw) where id is null.
  void queue_step(const int32_t* id);
  // decode_greedy (sampler null) and decode_sampled where the device draws.
  int32_t decode_picked(int32_t id, bool ahead, Sampler* sampler);
  // Queues the token pick of the last queued step (its argmax, or the sampler's draw) and its
  // read; returns the read's slot.
  int queue_pick(Sampler* sampler);
  // Whether a step may be queued ahead at n_past_ (decode_greedy's `ahead`).
  bool can_queue_ahead() const;
  // Forgets a step queued ahead (every call but the decode_picked that counts it).
  void drop_ahead() { ahead_queued_ = false; }
  // One forward of `ids` at n_past_ on every device; the logits to logits_ when read_logits.
  void forward(std::span<const int32_t> ids, int64_t call_end, bool read_logits);

  std::vector<float> logits_;  // host [vocab]
  int64_t n_past_ = 0;
  std::vector<int32_t> ids_;   // [n_past_] when known (empty after fill_random_context)
  std::string model_id_;
  bool graphs_ = false;
  bool ahead_ok_ = false;      // one device, every head block on it (a step queued ahead touches only it)
  bool ahead_queued_ = false;  // a step at n_past_ queued on the device's last pick, not counted yet
  int32_t ahead_input_ = -1;   // that pick: the token the last decode_picked returned
  Sampler* ahead_sampler_ = nullptr;  // how that step's own token is picked (null: argmax)
  int ahead_slot_ = 0;         // the read slot of that step's own pick
  int next_slot_ = 0;          // the read slot queue_pick uses next
};

// What generate() throws when GenerateCallbacks::cancelled says so: the held KV stays valid up to
// the last chunk or token that finished.
class Cancelled : public Error {
 public:
  Cancelled() : Error("generation cancelled") {}
};

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  // The prompt is the whole conversation: keep the held KV's common prefix with it
  // (Engine::keep_common_prefix) and prefill only the rest. Off: the prompt follows what is held.
  bool reuse_prefix = false;
  bool ignore_eos = false;
  std::vector<int64_t> eos_ids;  // stop ids; empty: the checkpoint config's eos_token_ids
  SamplerOptions sampling;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (the eos that stopped generation included)
  int64_t prompt_tokens = 0;
  int64_t reused_tokens = 0;  // prompt positions kept from the held KV (reuse_prefix), not prefilled
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
  std::function<bool()> cancelled;  // asked after each prefill chunk and each token; true: throw Cancelled
};

GenerateResult generate(Engine& engine, std::span<const int32_t> prompt, const GenerateOptions& options,
                        const GenerateCallbacks& callbacks = {});

}  // namespace headinfer
