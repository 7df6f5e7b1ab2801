// The offload KV cache: per layer, per head group, attend over the group's past wherever it lives.
//
// Resident groups are attended in place. Streamed groups go through a ring of `depth` device
// slots. Their home is the host tier, in slabs of S positions (HeadStore) allocated as the context
// reaches them: attend() first reserves the layer's host-tier groups up to pos0 + T, before it
// queues any copy that touches those rows, so a slab exists before any copy names it, and slabs
// never move or go away while copies or host tasks are in flight (only the store's destructor,
// after drain(), frees them). A fetch or write-back is one 2-D copy per slab it touches; the ring
// slot keeps one contiguous run per head, so what the device attends is unchanged.
//
// Streamed groups are visited in a fixed order (layer-major), and visit k uses slot k % depth;
// the visit counter runs on across forward calls, so the prefetch of visit k + depth may belong
// to the next layer or to the next forward's first layers (the ring is prefetched across layer
// and chunk boundaries). Per visit:
//
//   h2d:     wait slot_free[s]  -> copy home rows [lo, past) into slot s (per slab) -> record slot_ready[s]
//   compute: wait slot_ready[s] -> write the chunk's K/V into slot rows [pos0, pos0 + T)
//            -> attention over rows [lo, pos0 + T) -> record slot_attended[s]
//   d2h:     wait slot_attended[s] -> copy slot rows [pos0, pos0 + T) home (per slab) -> record slot_free[s]
//
// lo is the first key the chunk sees: 0 in a full-attention layer, pos0 - W + 1 in a sliding-window
// layer, whose group then crosses the link only for its window. A slot holds position lo in its
// row 0, with the rows of the layer's resident blocks (HeadStore::layer_rows), so a streamed head
// is attended with the same strides as a resident one. A window layer's resident blocks slide
// (HeadStore::make_room) and its host-tier blocks are rings of slabs; both keep positions
// absolute, so RoPE and the attention mask never see the trimming.
//
// slot_free orders both the reuse of a slot and every read of home rows after their write-back
// (d2h is in order, and a visit's prefetch waits for the slot_free recorded after the write-back
// of the visit before it, which follows every earlier write-back). Each head attends over one
// contiguous run of its keys with the same op as the all-resident cache, so every placement
// gives bit-identical outputs.
//
// Hybrid decode (plan.n_cpu_groups > 0): in a decode step (one new position) the CPU-attended
// groups never enter the ring. Per layer that has some, before its other groups:
//
//   compute: convert the CPU groups' new K/V rows to the KV dtype into the device staging buffer
//            -> record q_ready (q and the staged rows exist)
//   d2h:     wait q_ready -> copy the staged rows home -> record cpu_rows_home
//   host:    wait cpu_rows_home -> copy q to the host -> host task: host attention of the CPU
//            groups over their home rows [0, pos0 + 1) -> copy out and LSE into the layer's
//            output columns -> record host_done
//   compute: ... resident and streamed groups of the layer ... -> wait host_done
//
// so the CPU attends while the ring streams, and only the query and the result cross the link.
// The staged rows are rounded by the same Ops::copy as a device-attended group's rows, so the home
// block holds what the all-resident cache would. The staging buffer is rewritten only by the next
// CPU layer's conversion, which the compute stream issues after waiting host_done, and host_done
// follows cpu_rows_home: the previous copy home has finished reading it.
// Each CPU-attended head is attended whole by the host kernel, over its slabs as pages (the kernel
// cuts its split-KV at slab boundaries and merges the splits in its fixed order), so its output
// and LSE are final: they differ from the device op only by the host kernel's fp32 rounding.
// Decode steps visit the ring in their own order (the host-tier groups the CPU does not attend);
// prefill chunks, whose many queries the device attends faster, stream every host-tier group.
// Ring fetches also wait cpu_rows_home, so a prefill fetch of a CPU group sees its decode-step rows.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "headinfer/bandwidth.h"
#include "headinfer/error.h"
#include "headinfer/head_store.h"
#include "headinfer/host_attention.h"
#include "random_kv_fill.h"

namespace headinfer {
namespace {

class OffloadKvCache final : public KvCache {
 public:
  OffloadKvCache(Device& device, std::unique_ptr<Transfer> transfer, const ModelConfig& config, const Plan& plan,
                 int host_threads, DType kv_dtype)
      : device_(device),
        transfer_(std::move(transfer)),
        config_(config),
        plan_(plan),
        store_(device, *transfer_, config, plan, kv_dtype),
        depth_(plan.ring_depth),
        hybrid_(plan.n_cpu_groups > 0) {
    if (!plan.fits) throw Error(plan.message);
    // Sequence 0 (prefill, or no hybrid): every host-tier group. Sequence 1 (hybrid decode): the
    // host-tier groups the CPU does not attend.
    for (int64_t l = 0; l < config.n_layers; ++l)
      for (int64_t g = 0; g < plan.groups_per_layer; ++g) {
        if (plan.is_resident(l, g)) continue;
        seqs_[0].order.push_back({l, g});
        if (!plan.is_cpu_attended(l, g)) seqs_[1].order.push_back({l, g});
      }
    const auto n_streamed = static_cast<int64_t>(seqs_[0].order.size());
    if (n_streamed > 0 && (depth_ < 1 || depth_ > n_streamed))
      throw Error("offload KV: ring depth " + std::to_string(depth_) + " for " + std::to_string(n_streamed) +
                  " streamed groups");
    for (Sequence& seq : seqs_) {
      seq.depth = std::min(depth_, static_cast<int64_t>(seq.order.size()));
      seq.index_of.assign(static_cast<size_t>(plan.n_groups), -1);
      for (size_t i = 0; i < seq.order.size(); ++i) {
        const auto& [l, g] = seq.order[i];
        seq.index_of[static_cast<size_t>(l * plan.groups_per_layer + g)] = static_cast<int64_t>(i);
      }
    }
    if (n_streamed > 0) {
      h2d_ = transfer_->make_copy_stream("kv fetch");
      d2h_ = transfer_->make_copy_stream("kv write-back");
    }
    if (hybrid_) setup_hybrid(host_threads);
    // Ring slot s: [2][G][rows][head_dim] of the KV dtype, rows the resident blocks' of the layer
    // whose group it holds (a DeviceGroup), so each head is one contiguous run (the device attends
    // it as a resident one); sized for the largest streamed layer's. Fetches and write-backs are one
    // 2-D copy per host slab, slab pitch on the host side and the layer's rows here.
    const size_t slot_bytes = 2 * static_cast<size_t>(plan.group_size * plan.slot_positions) * store_.row_bytes();
    for (int64_t s = 0; s < depth_; ++s) {
      Slot slot;
      slot.buffer = DeviceBuffer(device, slot_bytes, "KV ring slot");
      slot.ready = transfer_->make_event();
      slot.attended = transfer_->make_event();
      slot.free = transfer_->make_event();
      slots_.push_back(std::move(slot));
    }
  }

  ~OffloadKvCache() override {
    drain();
    for (float* p : {q_host_, out_host_, lse_host_})
      if (p != nullptr) transfer_->free_host(p);
  }

  int64_t capacity() const override { return store_.capacity(); }
  const Plan& plan() const { return plan_; }
  Transfer& transfer() const { return *transfer_; }

  void reset() override {
    drain();
    store_.reset();
    std::fill(written_from_.begin(), written_from_.end(), 0);
    for (Sequence& seq : seqs_) seq.visit = 0;
    for (Slot& s : slots_) s.visit = -1;
  }

  void fill_random(int64_t n_positions, uint64_t seed) override {
    if (n_positions < 0 || n_positions > store_.capacity())
      throw Error("random KV fill: " + std::to_string(n_positions) + " positions, KV cache holds " +
                  std::to_string(store_.capacity()) + " (raise --ctx)");
    reset();  // no copy in flight reads or writes the blocks, and no ring slot holds stale rows
    std::vector<RandomKvBlock> host_runs;  // each host-tier head's rows, one run per slab
    std::vector<char> staging;  // host [64 MiB] staging for resident groups only
    const int64_t S = store_.slab_positions();
    for (int64_t l = 0; l < config_.n_layers; ++l) {
      // A window layer holds (and needs) only the positions the next chunk sees.
      const int64_t first = store_.window(l) > 0 ? config_.first_visible_key(l, n_positions) : 0;
      for (int64_t h = 0; h < config_.n_kv_heads; ++h) {
        const int64_t g = h / plan_.group_size;
        if (store_.tier(l, g) == Tier::Host) {
          store_.reserve(l, g, n_positions);
          for (int which = 0; which < 2; ++which)
            for (int64_t pos = first; pos < n_positions; pos = (pos / S + 1) * S)
              host_runs.push_back({store_.host_row(l, h, which, pos), l, h, which, pos,
                                   std::min((pos / S + 1) * S, n_positions) - pos});
          continue;
        }
        store_.rebase(l, g, first, n_positions);
        const int64_t origin = store_.resident_group(l, g).origin;
        for (int which = 0; which < 2; ++which) {
          char* block = static_cast<char*>(which == 0 ? store_.k_block(l, h) : store_.v_block(l, h));
          const RandomKvBlock b{block + static_cast<size_t>(first - origin) * store_.row_bytes(), l, h, which, first};
          if (staging.empty()) staging.resize(size_t{64} << 20);
          fill_random_device_block(device_, b, store_.dtype(), n_positions - first, config_.head_dim, seed, staging);
        }
      }
    }
    // The host tier is written in place, all runs at once, so every core works on it.
    fill_random_host_blocks(host_runs, store_.dtype(), config_.head_dim, seed);
    store_.set_length(n_positions);
  }

  void truncate(int64_t n) override {
    settle();
    store_.set_length(n);  // throws outside 0..capacity
  }
  int64_t kept_from(int64_t layer) const override {
    if (layer < 0 || layer >= config_.n_layers) throw Error("offload KV: layer out of range");
    int64_t first = written_from_[static_cast<size_t>(layer)];
    for (int64_t g = 0; g < plan_.groups_per_layer; ++g) first = std::max(first, store_.kept_from(layer, g));
    return first;
  }

  DType kv_dtype() const override { return store_.dtype(); }
  void read_rows(int64_t layer, int64_t kv_head, int which, int64_t begin, int64_t end, void* host_dst) override {
    settle();
    for_each_run(layer, kv_head, which, begin, end, host_dst, [&](void* block, void* host, size_t bytes, bool device) {
      if (device) device_.read_to_host(host, block, bytes);
      else std::memcpy(host, block, bytes);
    });
  }
  void write_rows(int64_t layer, int64_t kv_head, int which, int64_t begin, int64_t end,
                  const void* host_src) override {
    settle();
    check_rows(layer, kv_head, which, begin, end);
    const int64_t g = kv_head / plan_.group_size;
    if (store_.tier(layer, g) == Tier::Host) store_.reserve(layer, g, end);
    else store_.rebase(layer, g, begin, end);
    for_each_run(layer, kv_head, which, begin, end, const_cast<void*>(host_src),
                 [&](void* block, void* host, size_t bytes, bool device) {
                   if (device) device_.write_from_host(block, host, bytes);
                   else std::memcpy(block, host, bytes);
                 });
    auto& from = written_from_[static_cast<size_t>(layer)];
    from = std::max(from, begin);  // the rows before a snapshot's first were never written
  }
  void prepare(int64_t pos0, int64_t n) override {
    for (int64_t l = 0; l < config_.n_layers; ++l) make_room(l, pos0, n);
  }
  bool prepare_slides(int64_t pos0, int64_t n) const override {
    for (int64_t l = 0; l < config_.n_layers; ++l)
      for (int64_t g = 0; g < plan_.groups_per_layer; ++g)
        if (store_.slides(l, g, pos0 + n)) return true;
    return false;
  }
  void prepare_first_chunk(int64_t n_tokens) override {
    // A fresh store: every resident block starts at position 0, where a first chunk needs no room made.
    if (n_tokens < 1 || n_tokens > plan_.chunk || n_tokens > store_.capacity() || store_.length() != 0) return;
    for (int64_t l = 0; l < config_.n_layers; ++l)
      for (int64_t g = 0; g < plan_.groups_per_layer; ++g) {
        if (!plan_.is_resident(l, g)) continue;
        const int64_t G = plan_.group_size;
        const DeviceGroup dg = store_.resident_group(l, g);
        char* k = static_cast<char*>(dg.base);
        const size_t block = static_cast<size_t>(dg.rows) * store_.row_bytes();
        prepare_heads_attention(device_.ops(), config_, l, g * G, G, n_tokens,
                                HeadBlocks{k, k + static_cast<size_t>(G) * block, dg.rows * config_.head_dim,
                                           dg.origin, store_.dtype()});
      }
  }
  size_t bytes_device() const override { return store_.bytes_gpu(); }
  size_t bytes_host() const override { return store_.bytes_host(); }

  void attend(int64_t layer, const LayerAttention& a) override {
    const int64_t n_new = a.q.rows;
    if (a.pos0 + n_new > store_.capacity())
      throw Error("context full: " + std::to_string(a.pos0 + n_new) + " positions needed, KV cache holds " +
                  std::to_string(store_.capacity()) + " (raise --ctx)");
    if (layer < 0 || layer >= config_.n_layers) throw Error("offload KV: layer out of range");
    // Slabs for the chunk's rows, before any copy that touches them is queued; window blocks slid
    // to take the chunk.
    make_room(layer, a.pos0, n_new);
    const int seq = hybrid_ && n_new == 1 ? 1 : 0;
    const bool host_part = seq == 1 && !cpu_groups_[static_cast<size_t>(layer)].empty();
    if (host_part) start_host_attention(layer, a);
    for (int64_t g = 0; g < plan_.groups_per_layer; ++g) {
      if (host_part && plan_.is_cpu_attended(layer, g)) continue;
      const int64_t streamed_index = seqs_[seq].index_of[static_cast<size_t>(layer * plan_.groups_per_layer + g)];
      if (streamed_index < 0)
        attend_group(layer, g, store_.resident_group(layer, g), a);
      else
        attend_streamed(seq, layer, g, streamed_index, a);
    }
    if (host_part) transfer_->compute_stream().wait(*host_done_);
    if (layer + 1 == config_.n_layers) store_.set_length(a.pos0 + n_new);
  }

 private:
  struct Slot {
    DeviceBuffer buffer;
    std::unique_ptr<Event> ready;     // h2d: the fetch into this slot has landed
    std::unique_ptr<Event> attended;  // compute: attention has read (and appended to) this slot
    std::unique_ptr<Event> free;      // d2h: this slot's new rows are home; the slot may be refilled
    int64_t visit = -1;               // the visit whose fetch was issued into this slot
    int seq = 0;                      // ... of this sequence
    int64_t lo = 0, hi = 0;           // the positions that fetch brought (lo in row 0)
  };
  // One layer's host task: its arguments stay untouched until the task has run.
  struct HostJob {
    OffloadKvCache* cache = nullptr;
    std::vector<AttentionArgs> args;  // [most CPU heads in a layer]
    std::vector<HostKvPages> pages;   // [most CPU heads in a layer]: their K/V slabs (the store's tables)
    int64_t n_args = 0;
  };
  // A visit order of streamed groups; visit k of it uses slot k % depth and group order[k % n].
  struct Sequence {
    std::vector<std::pair<int64_t, int64_t>> order;  // (layer, group), layer-major
    std::vector<int64_t> index_of;                   // [n_groups]: index into order, -1 if not in it
    int64_t depth = 0;                               // min(ring slots, order.size())
    int64_t visit = 0;                               // the next visit
  };

  size_t row_bytes() const { return store_.row_bytes(); }

  // Issues the fetch of visit `visit` of sequence `seq` with the past a chunk at `past_end` sees:
  // positions [first visible key, past_end) of its group.
  void fetch(int seq, int64_t visit, int64_t past_end) {
    const Sequence& S = seqs_[seq];
    const auto n = static_cast<int64_t>(S.order.size());
    Slot& slot = slots_[static_cast<size_t>(visit % S.depth)];
    const auto& [l, g] = S.order[static_cast<size_t>(visit % n)];
    const int64_t lo = config_.first_visible_key(l, past_end);
    // The rows were written (so reserved) before; reserving here only guards the invariant.
    store_.reserve(l, g, past_end);
    h2d_->wait(*slot.free);
    if (hybrid_) h2d_->wait(*cpu_rows_home_);
    store_.copy_to_device(*h2d_, l, g, {slot.buffer.data(), store_.layer_rows(l), lo}, lo, past_end);
    h2d_->record(*slot.ready);
    slot.visit = visit;
    slot.seq = seq;
    slot.lo = lo;
    slot.hi = past_end;
  }

  void attend_streamed(int seq, int64_t layer, int64_t g, int64_t streamed_index, const LayerAttention& a) {
    Sequence& S = seqs_[seq];
    const auto n = static_cast<int64_t>(S.order.size());
    // Visits run in order; a forward that starts elsewhere (after an aborted one, or the first of
    // the other sequence) realigns, and a slot prefetched for something else is fetched again.
    if (S.visit % n != streamed_index) S.visit += (streamed_index - S.visit % n + n) % n;
    const int64_t visit = S.visit;
    Slot& slot = slots_[static_cast<size_t>(visit % S.depth)];
    if (slot.visit != visit || slot.seq != seq || slot.lo != config_.first_visible_key(layer, a.pos0) ||
        slot.hi < a.pos0)
      fetch(seq, visit, a.pos0);

    const DeviceGroup in_slot{slot.buffer.data(), store_.layer_rows(layer), slot.lo};
    Stream& compute = transfer_->compute_stream();
    compute.wait(*slot.ready);
    attend_group(layer, g, in_slot, a);
    compute.record(*slot.attended);

    d2h_->wait(*slot.attended);
    store_.copy_from_device(*d2h_, layer, g, in_slot, a.pos0, a.pos0 + a.q.rows);  // may straddle slabs
    d2h_->record(*slot.free);

    // Prefetch the visit that will next use this slot: later in this forward it needs the past
    // of a chunk at pos0; in the next forward (which starts at pos0 + T), of a chunk there.
    const int64_t ahead = visit + S.depth;
    const bool next_forward = (visit % n) + S.depth >= n;
    fetch(seq, ahead, next_forward ? a.pos0 + a.q.rows : a.pos0);
    ++S.visit;
  }

  // Host attention of the CPU-attended groups, their host staging and the stream that orders them.
  void setup_hybrid(int host_threads) {
    const int64_t G = plan_.group_size, gs = config_.group_size(), d = config_.head_dim;
    cpu_groups_.resize(static_cast<size_t>(config_.n_layers));
    int64_t max_heads = 1;
    for (int64_t l = 0; l < config_.n_layers; ++l) {
      for (int64_t g = 0; g < plan_.groups_per_layer; ++g)
        if (plan_.is_cpu_attended(l, g)) cpu_groups_[static_cast<size_t>(l)].push_back(g);
      max_heads = std::max(max_heads, static_cast<int64_t>(cpu_groups_[static_cast<size_t>(l)].size()) * G);
    }
    HostAttentionOptions o;
    o.n_threads = host_threads;
    o.max_heads = max_heads;
    o.max_queries = 1;
    o.max_q_heads = gs;
    o.max_head_dim = d;
    o.max_pages = std::max<int64_t>(1, store_.n_slabs());
    host_attention_ = std::make_unique<HostAttention>(o);
    host_jobs_.resize(static_cast<size_t>(config_.n_layers));
    for (HostJob& job : host_jobs_) {
      job.cache = this;
      job.args.resize(static_cast<size_t>(max_heads));
      job.pages.resize(static_cast<size_t>(max_heads));
    }
    staging_ = DeviceBuffer(device_, static_cast<size_t>(max_heads) * 2 * row_bytes(), "hybrid new-row staging");
    host_ = transfer_->make_copy_stream("host attention");
    q_ready_ = transfer_->make_event();
    cpu_rows_home_ = transfer_->make_event();
    host_done_ = transfer_->make_event();
    const auto f = sizeof(float);
    q_host_ = static_cast<float*>(transfer_->alloc_host(static_cast<size_t>(config_.q_dim()) * f, "host attention query"));
    out_host_ = static_cast<float*>(transfer_->alloc_host(static_cast<size_t>(config_.q_dim()) * f, "host attention output"));
    lse_host_ = static_cast<float*>(transfer_->alloc_host(static_cast<size_t>(config_.n_heads) * f, "host attention LSE"));
  }

  // Enqueues the host part of a decode step of `layer` (see the top of the file).
  void start_host_attention(int64_t layer, const LayerAttention& a) {
    const int64_t G = plan_.group_size, gs = config_.group_size(), d = config_.head_dim;
    const size_t f = sizeof(float), rb = row_bytes();
    const std::vector<int64_t>& groups = cpu_groups_[static_cast<size_t>(layer)];
    // Staging row 2i is head i's K, 2i + 1 its V (i counts the layer's CPU heads in order).
    Ops& ops = device_.ops();
    const DType kv = store_.dtype();
    int64_t i = 0;
    for (int64_t g : groups) {  // a group's G heads: K rows 2i, 2i + 2, ..., V rows one after each
      char* k_row = staging_.as<char>() + static_cast<size_t>(2 * i) * rb;
      ops.copy_heads_kv(a.k_new.slice_cols(g * G * d, G * d), a.v_new.slice_cols(g * G * d, G * d), G,
                        MatView{k_row, kv, 1, d, d}, MatView{k_row + rb, kv, 1, d, d}, 2 * d);
      i += G;
    }
    transfer_->compute_stream().record(*q_ready_);
    d2h_->wait(*q_ready_);
    i = 0;
    for (int64_t g : groups)
      for (int64_t h = g * G; h < (g + 1) * G; ++h, ++i) {
        const char* k_row = staging_.as<char>() + static_cast<size_t>(2 * i) * rb;
        d2h_->copy_2d(store_.host_row(layer, h, 0, a.pos0), rb, k_row, rb, rb, 1);
        d2h_->copy_2d(store_.host_row(layer, h, 1, a.pos0), rb, k_row + rb, rb, rb, 1);
      }
    d2h_->record(*cpu_rows_home_);

    host_->wait(*cpu_rows_home_);
    const size_t q_row = static_cast<size_t>(config_.q_dim()) * f;
    host_->copy_2d(q_host_, q_row, a.q.data, static_cast<size_t>(a.q.row_stride) * f, q_row, 1);
    // Each layer has its own arguments: the compute stream's wait on host_done does not hold this
    // thread (CUDA), so the previous layer's task may still be queued. The same layer's task of the
    // previous step has run: that step's logits were read back before this step began.
    HostJob& job = host_jobs_[static_cast<size_t>(layer)];
    job.n_args = 0;
    for (int64_t g : groups)
      for (int64_t h = g * G; h < (g + 1) * G; ++h) {
        job.pages[static_cast<size_t>(job.n_args)] =
            HostKvPages{store_.host_pages(layer, h, 0), store_.host_pages(layer, h, 1), store_.slab_positions()};
        AttentionArgs& args = job.args[static_cast<size_t>(job.n_args++)];
        args.q = MatView{q_host_ + h * gs * d, DType::F32, 1, gs * d, config_.q_dim()};
        args.kv = KvHeadView{nullptr, nullptr, store_.dtype(), d};  // paged: job.pages
        args.n_keys = a.pos0 + 1;
        args.head_dim = d;
        args.n_q_heads = gs;
        args.q_pos0 = a.pos0;
        args.k_pos0 = 0;
        args.window = config_.window(layer);
        args.scale = config_.attention_scale();  // transformers: head_dim (or query_pre_attn_scalar) ** -0.5
        args.softcap = config_.attn_softcap;
        args.out = MatView{out_host_ + h * gs * d, DType::F32, 1, gs * d, config_.q_dim()};
        args.lse = MatView{lse_host_ + h * gs, DType::F32, 1, gs, config_.n_heads};
      }
    host_->host_task(&run_host_attention, &job);
    for (int64_t g : groups) {
      // Group g's query heads are adjacent columns of out ([G * gs * d]) and of lse ([G * gs]).
      const int64_t h0 = g * G * gs;
      host_->copy_2d(a.out.row<float>(0) + h0 * d, static_cast<size_t>(a.out.row_stride) * f, out_host_ + h0 * d,
                     q_row, static_cast<size_t>(G * gs * d) * f, 1);
      host_->copy_2d(a.lse.row<float>(0) + h0, static_cast<size_t>(a.lse.row_stride) * f, lse_host_ + h0,
                     static_cast<size_t>(config_.n_heads) * f, static_cast<size_t>(G * gs) * f, 1);
    }
    host_->record(*host_done_);
  }

  static void run_host_attention(void* p) {
    const auto* job = static_cast<const HostJob*>(p);
    const auto n = static_cast<size_t>(job->n_args);
    job->cache->host_attention_->run(std::span<const AttentionArgs>(job->args.data(), n),
                                     std::span<const HostKvPages>(job->pages.data(), n));
  }

  // Window blocks of `layer` ready for a chunk of n positions at pos0 (slabs reserved, resident
  // blocks slid), before any copy that touches those rows is queued.
  void make_room(int64_t layer, int64_t pos0, int64_t n) {
    if (store_.window(layer) > 0 && n > plan_.chunk)
      throw Error("offload KV: a chunk of " + std::to_string(n) + " tokens, but the window layers were planned for " +
                  "chunks of at most " + std::to_string(plan_.chunk));
    for (int64_t g = 0; g < plan_.groups_per_layer; ++g) {
      store_.reserve(layer, g, pos0 + n);
      store_.make_room(layer, g, pos0, pos0 + n);
    }
  }

  // Appends the chunk's K/V of group g to the device group `dg` (resident blocks or a ring slot,
  // of the store's dtype; the copy rounds the F32 activations to it) and attends its G heads over
  // the keys the chunk sees in one call.
  void attend_group(int64_t layer, int64_t g, const DeviceGroup& dg, const LayerAttention& a) {
    const int64_t G = plan_.group_size;
    const size_t block = static_cast<size_t>(dg.rows) * store_.row_bytes();
    char* k = static_cast<char*>(dg.base);
    store_and_attend_heads(device_.ops(), config_, layer, g * G, G, a,
                           HeadBlocks{k, k + static_cast<size_t>(G) * block, dg.rows * config_.head_dim, dg.origin,
                                      store_.dtype()});
  }

  // Waits for every op and copy in flight and forgets what the ring slots hold, so the next visit
  // of every streamed group fetches its rows from home again (truncation, snapshot writes).
  void settle() {
    transfer_->compute_stream().synchronize();
    drain();
    for (Slot& s : slots_) s.visit = -1;
  }

  void check_rows(int64_t layer, int64_t kv_head, int which, int64_t begin, int64_t end) const {
    if (layer < 0 || layer >= config_.n_layers || kv_head < 0 || kv_head >= config_.n_kv_heads || which < 0 ||
        which > 1)
      throw Error("KV rows: head block out of range");
    if (begin < 0 || begin > end || end > store_.capacity())
      throw Error("KV rows " + std::to_string(begin) + ".." + std::to_string(end) + " outside 0.." +
                  std::to_string(store_.capacity()));
  }

  // Calls fn(block rows, host rows, bytes, on_device) for each contiguous run of rows [begin, end)
  // of head kv_head's K or V, host rows advancing from `host`: one run for a resident block, one
  // per slab for a host-tier one.
  template <class Fn>
  void for_each_run(int64_t layer, int64_t kv_head, int which, int64_t begin, int64_t end, void* host, Fn&& fn) {
    check_rows(layer, kv_head, which, begin, end);
    if (begin == end) return;
    const size_t rb = store_.row_bytes();
    char* dst = static_cast<char*>(host);
    const int64_t g = kv_head / plan_.group_size;
    if (store_.tier(layer, g) == Tier::Gpu) {
      const DeviceGroup dg = store_.resident_group(layer, g);
      if (begin < dg.origin || end - dg.origin > dg.rows)
        throw Error("KV rows " + std::to_string(begin) + ".." + std::to_string(end) + " of layer " +
                    std::to_string(layer) + " are not held (it keeps positions " + std::to_string(dg.origin) + ".." +
                    std::to_string(dg.origin + dg.rows) + ")");
      char* block = static_cast<char*>(which == 0 ? store_.k_block(layer, kv_head) : store_.v_block(layer, kv_head));
      fn(block + static_cast<size_t>(begin - dg.origin) * rb, dst, static_cast<size_t>(end - begin) * rb, true);
      return;
    }
    const int64_t S = store_.slab_positions();
    for (int64_t pos = begin; pos < end; pos = (pos / S + 1) * S) {
      const int64_t rows = std::min((pos / S + 1) * S, end) - pos;
      fn(store_.host_row(layer, kv_head, which, pos), dst + static_cast<size_t>(pos - begin) * rb,
         static_cast<size_t>(rows) * rb, false);
    }
  }

  // Waits for every copy in flight (teardown, reset): outside the token loop.
  void drain() {
    if (host_) host_->synchronize();
    if (h2d_) h2d_->synchronize();
    if (d2h_) d2h_->synchronize();
  }

  Device& device_;
  std::unique_ptr<Transfer> transfer_;  // before store_: the store's host blocks come from it
  const ModelConfig config_;
  const Plan plan_;
  HeadStore store_;
  const int64_t depth_;
  const bool hybrid_;
  Sequence seqs_[2];                                   // [0]: every host-tier group; [1]: hybrid decode
  std::vector<Slot> slots_;                            // [depth]
  std::unique_ptr<Stream> h2d_;                        // fetches into the ring
  std::unique_ptr<Stream> d2h_;                        // write-backs of new rows
  // Hybrid decode.
  std::vector<std::vector<int64_t>> cpu_groups_;       // [n_layers]: groups the CPU attends in decode
  std::unique_ptr<HostAttention> host_attention_;
  std::vector<HostJob> host_jobs_;                     // [n_layers]: each layer's host task
  DeviceBuffer staging_;                               // device KV dtype [most CPU heads in a layer][2][head_dim]:
                                                       //   the new K, V rows converted before going home
  std::unique_ptr<Stream> host_;                       // query down, host task, results up
  std::unique_ptr<Event> q_ready_;                     // compute: this layer's q and new K/V exist
  std::unique_ptr<Event> cpu_rows_home_;               // d2h: the CPU groups' new rows are home
  std::unique_ptr<Event> host_done_;                   // host: output and LSE are in the layer's columns
  float* q_host_ = nullptr;                            // host F32 [1][q_dim]: the decode query
  float* out_host_ = nullptr;                          // host F32 [1][q_dim]: output of the CPU heads' columns
  float* lse_host_ = nullptr;                          // host F32 [1][n_heads]
  // [n_layers]: the first row written since the last reset when a snapshot wrote rows [begin, end)
  // (kept_from); 0 otherwise.
  std::vector<int64_t> written_from_ = std::vector<int64_t>(static_cast<size_t>(config_.n_layers), 0);
};

}  // namespace

std::unique_ptr<KvCache> make_offload_kv_cache(Device& device, std::unique_ptr<Transfer> transfer,
                                               const ModelConfig& config, const Plan& plan, int host_threads,
                                               DType kv_dtype) {
  if (!plan.fits) throw Error(plan.message);
  return std::make_unique<OffloadKvCache>(device, std::move(transfer), config, plan, host_threads, kv_dtype);
}

std::unique_ptr<KvCache> make_planned_kv_cache(Device& device, const ModelConfig& config, int64_t context,
                                               int64_t chunk, int64_t weight_bytes,
                                               const KvPlacementOptions& options) {
  PlannerInput in;
  in.config = config;
  in.context = context;
  const DType kv_dtype = options.kv_dtype.value_or(DType::F32);
  in.kv_elem_bytes = static_cast<int64_t>(dtype_size(kv_dtype));
  in.weight_bytes = weight_bytes;
  in.activation_bytes = static_cast<int64_t>(device.bytes_in_use()) - (weight_bytes - options.weights_in_place_bytes);
  in.gpu_mem = options.gpu_mem;
  in.host_mem = options.host_mem > 0 ? options.host_mem : detect_host_memory();
  in.offload = options.offload;
  in.kv_group = options.kv_group;
  in.chunk = chunk;
  in.hybrid = options.hybrid;
  in.cpu_groups = options.cpu_groups;
  in.host_slab_positions = options.host_slab_positions;
  in.window_kv = options.window_kv;
  CpuTransferOptions to;
  to.host_budget = static_cast<size_t>(in.host_mem);
  to.copy_jitter_us = options.copy_jitter_us;
  to.host_alloc_fail_after = options.host_alloc_fail_after;
  auto transfer = device.make_transfer(to);
  // Balancing needs both bandwidths; a forced split or hybrid off needs neither.
  if (options.hybrid == HybridMode::Auto && options.cpu_groups < 0) {
    // The link is cached under this device's name: a CPU copy worker's rate must never plan a GPU.
    const HybridBandwidths bw = resolve_hybrid_bandwidths(*transfer, device, device.name(), options.link_gbps,
                                                          options.dram_gbps, options.host_threads);
    in.link_gbps = bw.link.gbps;
    in.dram_gbps = bw.dram.gbps;
  }
  const Plan plan = make_plan(in);
  if (!plan.fits) throw Error(plan.message);
  return make_offload_kv_cache(device, std::move(transfer), config, plan, options.host_threads, kv_dtype);
}

Plan plan_kv_placement(const Checkpoint& checkpoint, int64_t context, int64_t chunk, int64_t mlp_chunk,
                       const KvPlacementOptions& options,
                       const std::function<int64_t(int64_t, int64_t)>& scratch_bytes) {
  const ModelConfig config = shard_config(checkpoint.config(), options.shard_rank, options.n_shards);
  const TensorView* embed = checkpoint.find("model.embed_tokens.weight");
  PlannerInput in;
  in.config = config;
  in.context = context;
  in.kv_elem_bytes = static_cast<int64_t>(dtype_size(options.kv_dtype.value_or(DType::F32)));
  in.weight_elem_bytes = static_cast<int64_t>(dtype_size(embed != nullptr ? embed->dtype : DType::F32));
  if (options.n_shards > 1)
    in.weight_bytes = estimate_shard_weight_bytes(checkpoint.config(), options.shard_rank, options.n_shards,
                                                  in.weight_elem_bytes);
  in.gpu_mem = options.gpu_mem;
  in.host_mem = options.host_mem > 0 ? options.host_mem : detect_host_memory();
  in.offload = options.offload;
  in.kv_group = options.kv_group;
  in.chunk = chunk;
  in.mlp_chunk = mlp_chunk;
  in.host_slab_positions = options.host_slab_positions;
  in.window_kv = options.window_kv;
  // Hybrid's new-row staging is counted; which groups the CPU attends is decided once the link and
  // host read rates are measured (make_planned_kv_cache) and takes no GPU memory.
  in.hybrid = options.hybrid;
  in.cpu_groups = std::max<int64_t>(options.cpu_groups, 0);
  in.scratch_bytes = scratch_bytes;
  return make_plan(in);
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
