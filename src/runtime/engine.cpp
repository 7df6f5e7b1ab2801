#include "headinfer/engine.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <string>

#include "headinfer/error.h"
#include "headinfer/kv_snapshot.h"

namespace headinfer {
namespace {

ForwardWorkspaceSizes workspace_sizes(const EngineOptions& o) {
  if (o.context < 1) throw Error("context must be at least 1 token");
  if (o.chunk < 1) throw Error("--chunk must be at least 1");
  if (o.mlp_chunk < 1) throw Error("MLP chunk must be at least 1");
  return {std::min(o.chunk, o.context), std::min(o.mlp_chunk, o.chunk)};
}

// The KV element type the device keeps for this checkpoint (unless the caller chose one), the
// prefill chunk and MLP sub-chunk (unless given: the planner chooses them for the cap and the
// context, counting the device ops' scratch), and the pre-load check: the placement is planned
// before any weight is loaded, so a cap below the weights or a host too small fails at once.
EngineOptions resolved_options(const Checkpoint& checkpoint, std::span<Device* const> devices, EngineOptions o) {
  if (devices.empty()) throw Error("an engine needs at least one device");
  Device& device = *devices[0];
  if (o.context < 1) throw Error("context must be at least 1 token");
  if (o.chunk < 0) throw Error("--chunk must be at least 1 (0: the planner chooses)");
  if (o.mlp_chunk < 0) throw Error("MLP chunk must be at least 1 (0: the planner chooses)");
  const TensorView* embed = checkpoint.find("model.embed_tokens.weight");
  const DType weight_dtype = embed != nullptr ? embed->dtype : DType::F32;
  if (!o.kv.kv_dtype) o.kv.kv_dtype = device.kv_dtype(weight_dtype);
  // Split over devices: device 0's share plans the chunk for all (it holds the most: the lm_head).
  const int n = static_cast<int>(devices.size());
  if (n > 1) {
    if (o.kv.host_mem == 0) o.kv.host_mem = detect_host_memory();
    o.kv.host_mem /= n;  // one host tier for all the devices
    o.kv.n_shards = n;
    o.kv.shard_rank = 0;
  }
  const ModelConfig config = shard_config(checkpoint.config(), 0, n);
  auto scratch = [&](int64_t chunk, int64_t mlp_chunk) {
    return static_cast<int64_t>(device.ops().workspace_bytes(ops_workspace_sizes(config, {chunk, mlp_chunk}, weight_dtype)));
  };
  const Plan plan = plan_kv_placement(checkpoint, o.context, o.chunk, o.mlp_chunk, o.kv, scratch);
  if (!plan.fits) throw Error(plan.message);
  o.chunk = plan.chunk;
  o.mlp_chunk = plan.mlp_chunk;
  workspace_sizes(o);
  return o;
}

// The placement options once the model is loaded: weights it uses in place count as weights.
KvPlacementOptions with_loaded_model(KvPlacementOptions kv, const Model& model) {
  kv.weights_in_place_bytes = static_cast<int64_t>(model.weights_in_place_bytes());
  return kv;
}

std::unique_ptr<KvCache> make_engine_kv(std::span<Device* const> devices, const Checkpoint& checkpoint,
                                        const EngineOptions& o, ShardedModel* sharded, Model& model) {
  if (sharded == nullptr)
    return make_planned_kv_cache(*devices[0], checkpoint.config(), o.context, o.chunk, model.weight_bytes(),
                                 with_loaded_model(o.kv, model));
  std::vector<std::unique_ptr<KvCache>> shards;
  for (int r = 0; r < sharded->n_shards(); ++r) {
    Model& shard = sharded->shard(r);
    KvPlacementOptions kv = with_loaded_model(o.kv, shard);
    kv.shard_rank = r;
    shards.push_back(make_planned_kv_cache(shard.device(), shard.config(), o.context, o.chunk, shard.weight_bytes(), kv));
  }
  return std::make_unique<ShardedKvCache>(std::move(shards), sharded->shard(0).config().n_kv_heads);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Engine::Engine(const Checkpoint& checkpoint, Device& device, const EngineOptions& options)
    : Engine(checkpoint, std::span<Device* const>(std::vector<Device*>{&device}), options) {}

Engine::Engine(const Checkpoint& checkpoint, std::span<Device* const> devices, const EngineOptions& options)
    : options_(resolved_options(checkpoint, devices, options)),
      config_(checkpoint.config()),
      sharded_(devices.size() > 1 ? std::make_unique<ShardedModel>(checkpoint, devices, workspace_sizes(options_))
                                  : nullptr),
      // One device: the weights are copied after the KV cache is made (the constructor's body), so
      // the first chunk's plans can be built while they copy.
      own_model_(devices.size() == 1
                     ? std::make_unique<Model>(checkpoint, *devices[0], workspace_sizes(options_), ModelShard{}, true)
                     : nullptr),
      model_(sharded_ ? sharded_->shard(0) : *own_model_),
      kv_(make_engine_kv(devices, checkpoint, options_, sharded_.get(), model_)),
      logits_(static_cast<size_t>(checkpoint.config().vocab_size)),
      model_id_(model_identity(checkpoint, devices[0])) {
  ids_.reserve(static_cast<size_t>(options_.context));  // nothing allocates in the token loop
  if (own_model_) {
    if (options_.prompt_tokens > 0) {
      const int64_t first = std::min(options_.prompt_tokens, options_.chunk);
      kv_->prepare_first_chunk(first);
      own_model_->prepare_first_chunk(first);
    }
    own_model_->copy_weights();
  }
  const Plan* plan = kv_cache_plan(*kv_);
  const bool resident = plan != nullptr && plan->n_streamed_groups == 0 && plan->n_cpu_groups == 0;
  graphs_ = options_.step_graphs && !sharded_ && resident;
  ahead_ok_ = !sharded_ && resident;
}

void Engine::step(int32_t id) {
  queue_step(&id);
  ++n_past_;
  ids_.push_back(id);
}

void Engine::queue_step(const int32_t* id) {
  if (n_past_ + 1 > options_.context)
    throw Error("context full: " + std::to_string(n_past_ + 1) + " tokens needed, context is " +
                std::to_string(options_.context) + " (raise --ctx)");
  Device& device = model_.device();
  kv_->prepare(n_past_, 1);  // a window block's move is queued here, never recorded in a graph
  auto run = [&] {
    if (id != nullptr) model_.forward(std::span<const int32_t>(id, 1), n_past_, *kv_);
    else model_.forward_picked_token(n_past_, *kv_);
  };
  if (graphs_ && device.begin_graph()) {
    bool recorded = false;
    try {
      run();
      recorded = true;
    } catch (const Error&) {
      device.abort_graph();  // a genuine error shows again in the eager run below
    }
    if (recorded && device.end_graph()) return;
    graphs_ = false;  // the recording failed: run this step, and the next ones, without graphs
  } else {
    graphs_ = false;
  }
  if (id != nullptr) forward(std::span<const int32_t>(id, 1), 0, false);
  else run();  // never sharded (can_queue_ahead)
}

bool Engine::can_queue_ahead() const {
  return ahead_ok_ && n_past_ + 1 <= options_.context && !kv_->prepare_slides(n_past_, 1);
}

void Engine::forward(std::span<const int32_t> ids, int64_t call_end, bool read_logits) {
  if (sharded_) {
    // Rank 0's logits stay in its device memory for read_logits and the picks (Model::queue_argmax).
    sharded_->forward(ids, n_past_, static_cast<ShardedKvCache&>(*kv_).shards(), call_end);
    if (read_logits) model_.read_logits(logits_);
  } else if (read_logits) {
    model_.forward(ids, n_past_, *kv_, logits_, call_end);
  } else {
    model_.forward(ids, n_past_, *kv_, call_end);
  }
}

std::span<const float> Engine::decode(int32_t id) {
  drop_ahead();
  step(id);
  model_.read_logits(logits_);
  return logits_;
}

int32_t Engine::decode_sampled(int32_t id, Sampler& sampler, bool ahead) {
  if (model_.device().ops().samples_on_device()) return decode_picked(id, ahead, &sampler);
  drop_ahead();
  step(id);
  model_.read_logits(logits_);
  return sampler.sample(logits_);
}

int32_t Engine::decode_greedy(int32_t id, bool ahead) { return decode_picked(id, ahead, nullptr); }

int Engine::queue_pick(Sampler* sampler) {
  const int slot = next_slot_;
  next_slot_ = (next_slot_ + 1) % Device::kReadSlots;
  if (sampler == nullptr) {
    model_.queue_argmax(slot);
  } else {
    const SamplerOptions& o = sampler->options();
    model_.queue_sample(slot, o.temperature, o.top_k, o.top_p, sampler->next_uniform());
  }
  return slot;
}

int32_t Engine::decode_picked(int32_t id, bool ahead, Sampler* sampler) {
  int slot = 0;
  if (ahead_queued_ && id == ahead_input_ && sampler == ahead_sampler_) {  // queued already: count it
    ahead_queued_ = false;
    ++n_past_;
    ids_.push_back(id);
    slot = ahead_slot_;
  } else {
    drop_ahead();
    step(id);
    slot = queue_pick(sampler);
  }
  if (ahead && can_queue_ahead()) {
    queue_step(nullptr);
    ahead_slot_ = queue_pick(sampler);
    ahead_sampler_ = sampler;
    ahead_queued_ = true;
  }
  const int32_t token = model_.wait_pick(slot);
  ahead_input_ = token;
  return token;
}

std::span<const float> Engine::prefill(std::span<const int32_t> ids,
                                       const std::function<void(int64_t, int64_t)>& progress) {
  drop_ahead();
  const auto total = static_cast<int64_t>(ids.size());
  if (total == 0) throw Error("prefill needs at least one token");
  if (n_past_ + total > options_.context)
    throw Error("context full: " + std::to_string(n_past_ + total) + " tokens needed, context is " +
                std::to_string(options_.context) + " (raise --ctx)");
  const int64_t chunk = model_.max_chunk();
  const int64_t end = n_past_ + total;  // the whole prefill is one call for longrope's choice
  for (int64_t done = 0; done < total; done += chunk) {
    const int64_t n = std::min(chunk, total - done);
    // Only the last chunk's logits are read back: earlier chunks queue their work without a host
    // round trip, so the device never waits for the host between chunks.
    const auto chunk_ids = ids.subspan(static_cast<size_t>(done), static_cast<size_t>(n));
    forward(chunk_ids, end, done + n == total);
    n_past_ += n;
    ids_.insert(ids_.end(), ids.begin() + done, ids.begin() + done + n);
    if (progress) progress(done + n, total);
  }
  return logits_;
}

void Engine::reset() {
  drop_ahead();
  n_past_ = 0;
  ids_.clear();
  kv_->reset();
}

int64_t Engine::min_kept_prefix() const {
  const ModelConfig& c = config();
  int64_t shortest = 0;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const int64_t first = kv_->kept_from(l);
    if (first == 0) continue;
    // A chunk at n sees keys from n - W + 1 on; a full-attention layer needs them all.
    shortest = c.window(l) > 0 ? std::max(shortest, first + c.window(l) - 1) : std::numeric_limits<int64_t>::max();
  }
  return shortest;
}

void Engine::truncate(int64_t n) {
  drop_ahead();
  if (n < 0 || n > n_past_)
    throw Error("KV truncate to " + std::to_string(n) + " positions: " + std::to_string(n_past_) + " are held");
  if (n == n_past_) return;
  if (n > 0 && n < min_kept_prefix())
    throw Error("KV truncate to " + std::to_string(n) + " positions: the sliding-window layers no longer hold the " +
                "positions a chunk there sees (the shortest prefix kept is " + std::to_string(min_kept_prefix()) +
                "); recompute from the start");
  kv_->truncate(n);
  n_past_ = n;
  ids_.resize(static_cast<size_t>(std::min<int64_t>(n, static_cast<int64_t>(ids_.size()))));
}

int64_t Engine::keep_common_prefix(std::span<const int32_t> ids) {
  drop_ahead();
  if (static_cast<int64_t>(ids_.size()) != n_past_) {  // positions without ids (a random fill)
    reset();
    return 0;
  }
  const size_t limit = std::min(ids_.size(), ids.empty() ? size_t{0} : ids.size() - 1);
  const size_t common = static_cast<size_t>(
      std::mismatch(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(limit), ids.begin()).first - ids_.begin());
  if (static_cast<int64_t>(common) < min_kept_prefix()) {
    // A sliding-window layer has dropped the positions a chunk at `common` sees: recompute.
    reset();
    return 0;
  }
  truncate(static_cast<int64_t>(common));
  return static_cast<int64_t>(common);
}

void Engine::fill_random_context(int64_t n_positions, uint64_t seed) {
  drop_ahead();
  if (n_positions < 0 || n_positions > options_.context)
    throw Error("random context of " + std::to_string(n_positions) + " positions: context is " +
                std::to_string(options_.context) + " (raise --ctx)");
  n_past_ = 0;  // a failed fill leaves an empty context, not a stale one
  ids_.clear();
  kv_->fill_random(n_positions, seed);
  n_past_ = n_positions;
}

double GenerateResult::decode_tokens_per_second() const {
  const auto n = static_cast<double>(tokens.size() > 1 ? tokens.size() - 1 : 0);
  return decode_seconds > 0.0 ? n / decode_seconds : 0.0;
}

GenerateResult generate(Engine& engine, std::span<const int32_t> prompt, const GenerateOptions& options,
                        const GenerateCallbacks& callbacks) {
  if (prompt.empty()) throw Error("the prompt is empty: give at least one token");
  const auto n_prompt = static_cast<int64_t>(prompt.size());
  const int64_t held = options.reuse_prefix ? 0 : engine.n_past();
  if (n_prompt > engine.context() - held)
    throw Error("prompt of " + std::to_string(n_prompt) + " tokens does not fit the context of " +
                std::to_string(engine.context()) + " tokens (raise --ctx)");
  auto check_cancel = [&] {
    if (callbacks.cancelled && callbacks.cancelled()) throw Cancelled();
  };
  check_cancel();
  const std::vector<int64_t>& eos = options.eos_ids.empty() ? engine.config().eos_token_ids : options.eos_ids;
  Sampler sampler(options.sampling);
  GenerateResult result;
  result.prompt_tokens = n_prompt;

  auto t0 = std::chrono::steady_clock::now();
  if (options.reuse_prefix) result.reused_tokens = engine.keep_common_prefix(prompt);
  std::span<const float> logits =
      engine.prefill(prompt.subspan(static_cast<size_t>(result.reused_tokens)), [&](int64_t done, int64_t total) {
        if (callbacks.on_prefill_progress) callbacks.on_prefill_progress(done, total);
        check_cancel();
      });
  result.prefill_seconds = seconds_since(t0);
  // With nobody looking at the logits, the device picks the token: its argmax when greedy, else a
  // draw on the device (where it samples; else the host samples, as below).
  const bool device_pick = !callbacks.on_logits;
  int32_t greedy_id = -1;  // the token the device picked in the last step, when device_pick
  auto t_decode = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < options.max_new_tokens; ++i) {
    if (callbacks.on_logits) callbacks.on_logits(logits);
    const int32_t id = greedy_id >= 0 ? greedy_id : sampler.sample(logits);
    result.tokens.push_back(id);
    if (callbacks.on_token) callbacks.on_token(id);
    if (!options.ignore_eos && std::find(eos.begin(), eos.end(), id) != eos.end()) {
      result.stopped_at_eos = true;
      break;
    }
    if (i + 1 == options.max_new_tokens) break;
    if (engine.n_past() >= engine.context()) {
      result.stopped_at_context = true;
      break;
    }
    check_cancel();
    if (i == 0) t_decode = std::chrono::steady_clock::now();
    if (device_pick && options.sampling.temperature == 0.0f)
      greedy_id = engine.decode_greedy(id, /*ahead=*/i + 2 < options.max_new_tokens);  // another step follows
    else if (device_pick)
      greedy_id = engine.decode_sampled(id, sampler, /*ahead=*/i + 2 < options.max_new_tokens);
    else
      logits = engine.decode(id);
  }
  // The first token comes from the prefill's logits; decode time covers the tokens after it.
  if (result.tokens.size() > 1) result.decode_seconds = seconds_since(t_decode);
  return result;
}

}  // namespace headinfer
