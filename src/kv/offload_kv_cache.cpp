// The offload KV cache: per layer, per head group, attend over the group's past wherever it lives.
//
// Resident groups are attended in place. Streamed groups go through a ring of `depth` device
// slots. Streamed groups are visited in a fixed order (layer-major), and visit k uses slot
// k % depth; the visit counter runs on across forward calls, so the prefetch of visit k + depth
// may belong to the next layer or to the next forward's first layers (the ring is prefetched
// across layer and chunk boundaries). Per visit:
//
//   h2d:     wait slot_free[s]  -> copy home rows [0, past) into slot s -> record slot_ready[s]
//   compute: wait slot_ready[s] -> write the chunk's K/V into slot rows [pos0, pos0 + T)
//            -> attention over rows [0, pos0 + T) -> record slot_attended[s]
//   d2h:     wait slot_attended[s] -> copy slot rows [pos0, pos0 + T) home -> record slot_free[s]
//
// slot_free orders both the reuse of a slot and every read of home rows after their write-back
// (d2h is in order, and a visit's prefetch waits for the slot_free recorded after the write-back
// of the visit before it, which follows every earlier write-back). Each head attends over one
// contiguous run of its keys with the same op as the all-resident cache, so every placement
// gives bit-identical outputs.
#include <cmath>
#include <string>
#include <vector>

#include "headinfer/error.h"
#include "headinfer/head_store.h"

namespace headinfer {
namespace {

class OffloadKvCache final : public KvCache {
 public:
  OffloadKvCache(Device& device, std::unique_ptr<Transfer> transfer, const ModelConfig& config, const Plan& plan)
      : device_(device),
        transfer_(std::move(transfer)),
        config_(config),
        plan_(plan),
        store_(device, *transfer_, config, plan, DType::F32),
        depth_(plan.ring_depth) {
    if (!plan.fits) throw Error(plan.message);
    for (int64_t l = 0; l < config.n_layers; ++l)
      for (int64_t g = 0; g < plan.groups_per_layer; ++g)
        if (!plan.is_resident(l, g)) streamed_.push_back({l, g});
    const auto n_streamed = static_cast<int64_t>(streamed_.size());
    if (n_streamed > 0 && (depth_ < 1 || depth_ > n_streamed))
      throw Error("offload KV: ring depth " + std::to_string(depth_) + " for " + std::to_string(n_streamed) +
                  " streamed groups");
    visit_of_.assign(static_cast<size_t>(plan.n_groups), -1);
    for (int64_t i = 0; i < n_streamed; ++i) {
      const auto& [l, g] = streamed_[static_cast<size_t>(i)];
      visit_of_[static_cast<size_t>(l * plan.groups_per_layer + g)] = i;
    }
    if (n_streamed > 0) {
      h2d_ = transfer_->make_copy_stream("kv fetch");
      d2h_ = transfer_->make_copy_stream("kv write-back");
    }
    // Ring slot s: F32 [2][G][capacity][head_dim], the layout of a home group (HeadStore), so
    // fetches and write-backs are single 2-D copies with equal pitch on both sides.
    const size_t slot_bytes = 2 * static_cast<size_t>(plan.group_size) * store_.block_pitch();
    for (int64_t s = 0; s < depth_; ++s) {
      Slot slot;
      slot.buffer = DeviceBuffer(device, slot_bytes, "KV ring slot");
      slot.ready = transfer_->make_event();
      slot.attended = transfer_->make_event();
      slot.free = transfer_->make_event();
      slots_.push_back(std::move(slot));
    }
  }

  ~OffloadKvCache() override { drain(); }

  int64_t capacity() const override { return store_.capacity(); }
  const Plan& plan() const { return plan_; }
  Transfer& transfer() const { return *transfer_; }

  void reset() override {
    drain();
    store_.reset();
    visit_ = 0;
    for (Slot& s : slots_) s.visit = -1;
  }

  void attend(int64_t layer, const LayerAttention& a) override {
    const int64_t n_new = a.q.rows;
    if (a.pos0 + n_new > store_.capacity())
      throw Error("context full: " + std::to_string(a.pos0 + n_new) + " positions needed, KV cache holds " +
                  std::to_string(store_.capacity()) + " (raise --ctx)");
    if (layer < 0 || layer >= config_.n_layers) throw Error("offload KV: layer out of range");
    for (int64_t g = 0; g < plan_.groups_per_layer; ++g) {
      const int64_t streamed_index = visit_of_[static_cast<size_t>(layer * plan_.groups_per_layer + g)];
      if (streamed_index < 0)
        attend_group(layer, g, store_.group_base(layer, g), a);
      else
        attend_streamed(layer, g, streamed_index, a);
    }
    if (layer + 1 == config_.n_layers) store_.set_length(a.pos0 + n_new);
  }

 private:
  struct Slot {
    DeviceBuffer buffer;
    std::unique_ptr<Event> ready;     // h2d: the fetch into this slot has landed
    std::unique_ptr<Event> attended;  // compute: attention has read (and appended to) this slot
    std::unique_ptr<Event> free;      // d2h: this slot's new rows are home; the slot may be refilled
    int64_t visit = -1;               // the visit whose fetch was issued into this slot
    int64_t rows = 0;                 // rows that fetch brought
  };

  size_t row_bytes() const { return static_cast<size_t>(config_.head_dim) * store_.elem_bytes(); }
  size_t n_group_rows() const { return 2 * static_cast<size_t>(plan_.group_size); }  // K and V of G heads

  // Issues the fetch of visit `visit` (streamed group visit % n) with its first `rows` positions.
  void fetch(int64_t visit, int64_t rows) {
    const auto n = static_cast<int64_t>(streamed_.size());
    Slot& slot = slots_[static_cast<size_t>(visit % depth_)];
    const auto& [l, g] = streamed_[static_cast<size_t>(visit % n)];
    h2d_->wait(*slot.free);
    h2d_->copy_2d(slot.buffer.data(), store_.block_pitch(), store_.group_base(l, g), store_.block_pitch(),
                  static_cast<size_t>(rows) * row_bytes(), n_group_rows());
    h2d_->record(*slot.ready);
    slot.visit = visit;
    slot.rows = rows;
  }

  void attend_streamed(int64_t layer, int64_t g, int64_t streamed_index, const LayerAttention& a) {
    const auto n = static_cast<int64_t>(streamed_.size());
    // Visits run in order; a forward that starts elsewhere (after an aborted one) realigns.
    if (visit_ % n != streamed_index) visit_ += (streamed_index - visit_ % n + n) % n;
    const int64_t visit = visit_;
    Slot& slot = slots_[static_cast<size_t>(visit % depth_)];
    if (slot.visit != visit || slot.rows < a.pos0) fetch(visit, a.pos0);

    Stream& compute = transfer_->compute_stream();
    compute.wait(*slot.ready);
    attend_group(layer, g, slot.buffer.data(), a);
    compute.record(*slot.attended);

    const size_t offset = static_cast<size_t>(a.pos0) * row_bytes();
    d2h_->wait(*slot.attended);
    d2h_->copy_2d(static_cast<char*>(store_.group_base(layer, g)) + offset, store_.block_pitch(),
                  static_cast<char*>(slot.buffer.data()) + offset, store_.block_pitch(),
                  static_cast<size_t>(a.q.rows) * row_bytes(), n_group_rows());
    d2h_->record(*slot.free);

    // Prefetch the visit that will next use this slot: later in this forward it needs the past
    // [0, pos0); in the next forward (which starts at pos0 + T) it also needs this chunk's rows.
    const int64_t ahead = visit + depth_;
    const bool next_forward = (visit % n) + depth_ >= n;
    fetch(ahead, next_forward ? a.pos0 + a.q.rows : a.pos0);
    ++visit_;
  }

  // Appends the chunk's K/V of group g to the group storage at `base` ([2][G][capacity][head_dim]
  // F32) and attends each head over rows [0, pos0 + T).
  void attend_group(int64_t layer, int64_t g, void* base, const LayerAttention& a) {
    Ops& ops = device_.ops();
    const int64_t d = config_.head_dim, gs = config_.group_size(), G = plan_.group_size;
    const int64_t n_new = a.q.rows;
    const int64_t cap = store_.capacity();
    for (int64_t j = 0; j < G; ++j) {
      const int64_t h = g * G + j;
      float* k = static_cast<float*>(base) + j * cap * d;
      float* v = static_cast<float*>(base) + (G + j) * cap * d;
      ops.copy(a.k_new.slice_cols(h * d, d), MatView{k + a.pos0 * d, DType::F32, n_new, d, d});
      ops.copy(a.v_new.slice_cols(h * d, d), MatView{v + a.pos0 * d, DType::F32, n_new, d, d});
      AttentionArgs args;
      args.q = a.q.slice_cols(h * gs * d, gs * d);
      args.kv = KvHeadView{k, v, DType::F32, d};
      args.n_keys = a.pos0 + n_new;
      args.head_dim = d;
      args.n_q_heads = gs;
      args.q_pos0 = a.pos0;
      args.k_pos0 = 0;
      args.window = config_.layer_window[static_cast<size_t>(layer)];
      args.scale = static_cast<float>(std::pow(static_cast<double>(d), -0.5));  // transformers: head_dim**-0.5
      args.out = a.out.slice_cols(h * gs * d, gs * d);
      args.lse = a.lse.slice_cols(h * gs, gs);
      ops.attention(args);
    }
  }

  // Waits for every copy in flight (teardown, reset): outside the token loop.
  void drain() {
    if (h2d_) h2d_->synchronize();
    if (d2h_) d2h_->synchronize();
  }

  Device& device_;
  std::unique_ptr<Transfer> transfer_;  // before store_: the store's host blocks come from it
  const ModelConfig config_;
  const Plan plan_;
  HeadStore store_;
  const int64_t depth_;
  std::vector<std::pair<int64_t, int64_t>> streamed_;  // visit order: (layer, group), layer-major
  std::vector<int64_t> visit_of_;                      // [n_groups]: index into streamed_, -1 resident
  std::vector<Slot> slots_;                            // [depth]
  std::unique_ptr<Stream> h2d_;                        // fetches into the ring
  std::unique_ptr<Stream> d2h_;                        // write-backs of new rows
  int64_t visit_ = 0;                                  // the next streamed visit
};

}  // namespace

std::unique_ptr<KvCache> make_offload_kv_cache(Device& device, std::unique_ptr<Transfer> transfer,
                                               const ModelConfig& config, const Plan& plan) {
  if (!plan.fits) throw Error(plan.message);
  return std::make_unique<OffloadKvCache>(device, std::move(transfer), config, plan);
}

std::unique_ptr<KvCache> make_planned_kv_cache(Device& device, const ModelConfig& config, int64_t context,
                                               int64_t chunk, int64_t weight_bytes,
                                               const KvPlacementOptions& options) {
  PlannerInput in;
  in.config = config;
  in.context = context;
  in.kv_elem_bytes = 4;  // the CPU backend's KV is F32
  in.weight_bytes = weight_bytes;
  in.activation_bytes = static_cast<int64_t>(device.bytes_in_use()) - weight_bytes;
  in.gpu_mem = options.gpu_mem;
  in.host_mem = options.host_mem > 0 ? options.host_mem : detect_host_memory();
  in.offload = options.offload;
  in.kv_group = options.kv_group;
  in.chunk = chunk;
  const Plan plan = make_plan(in);
  if (!plan.fits) throw Error(plan.message);
  CpuTransferOptions to;
  to.host_budget = static_cast<size_t>(in.host_mem);
  to.copy_jitter_us = options.copy_jitter_us;
  return make_offload_kv_cache(device, make_cpu_transfer(to), config, plan);
}

void check_kv_placement(const Checkpoint& checkpoint, int64_t context, int64_t chunk,
                        const KvPlacementOptions& options) {
  const ModelConfig& config = checkpoint.config();
  const TensorView* embed = checkpoint.find("model.embed_tokens.weight");
  PlannerInput in;
  in.config = config;
  in.context = context;
  in.kv_elem_bytes = 4;  // the CPU backend's KV is F32
  in.weight_elem_bytes = static_cast<int64_t>(dtype_size(embed != nullptr ? embed->dtype : DType::F32));
  in.gpu_mem = options.gpu_mem;
  in.host_mem = options.host_mem > 0 ? options.host_mem : detect_host_memory();
  in.offload = options.offload;
  in.kv_group = options.kv_group;
  in.chunk = chunk;
  const Plan plan = make_plan(in);
  if (!plan.fits) throw Error(plan.message);
}

const Plan* kv_cache_plan(const KvCache& cache) {
  const auto* c = dynamic_cast<const OffloadKvCache*>(&cache);
  return c != nullptr ? &c->plan() : nullptr;
}

size_t kv_cache_host_peak_bytes(const KvCache& cache) {
  const auto* c = dynamic_cast<const OffloadKvCache*>(&cache);
  return c != nullptr ? c->transfer().host_peak_bytes() : 0;
}

}  // namespace headinfer
