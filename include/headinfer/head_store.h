#pragma once
// HeadStore: the KV cache as head blocks. A head block (layer l, kv head h) holds K and V of that
// head for every position, [capacity, head_dim] each, in one tier: `Gpu` (the compute device's
// memory, attended in place) or `Host` (the host tier, streamed to the device through a ring, or
// attended on the CPU). G adjacent kv heads of a layer form a group that shares a tier and moves
// as one unit.
//
// The offload KV cache built on it runs the schedule of ../shared/DESIGN.md ("The schedule"): per
// layer, per head group, the past is present (resident, or prefetched into a ring slot, ahead
// across layer boundaries), attention runs over it, and the chunk's new K/V go to the home tier.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "headinfer/backend.h"
#include "headinfer/checkpoint.h"
#include "headinfer/config.h"
#include "headinfer/kv_cache.h"
#include "headinfer/planner.h"
#include "headinfer/transfer.h"

namespace headinfer {

enum class Tier : uint8_t { Gpu, Host };

// A group's K and V on the device, laid out as a resident group: [2][G][rows][head_dim], the G
// heads' K blocks then their V blocks, row r of each holding position origin + r (a resident
// group of a window layer slides its origin; a ring slot holds whatever its fetch brought).
struct DeviceGroup {
  void* base = nullptr;
  int64_t rows = 0;
  int64_t origin = 0;
};

class HeadStore {
 public:
  // Resident groups are allocated on `device` here, for the whole context (a window layer's for
  // its window: Plan::layers). Host-tier groups start empty and grow in slabs (reserve) through
  // `transfer`'s host allocator (pinned on CUDA): pinning is slow, so only what the context
  // reaches is pinned. The plan has already checked that the whole context fits the host budget.
  HeadStore(Device& device, Transfer& transfer, const ModelConfig& config, const Plan& plan, DType dtype);
  ~HeadStore();
  HeadStore(const HeadStore&) = delete;
  HeadStore& operator=(const HeadStore&) = delete;

  int64_t capacity() const { return capacity_; }
  int64_t head_dim() const { return head_dim_; }
  int64_t group_size() const { return group_size_; }
  int64_t groups_per_layer() const { return groups_per_layer_; }
  DType dtype() const { return dtype_; }
  size_t elem_bytes() const { return elem_bytes_; }
  size_t row_bytes() const { return row_bytes_; }  // one position of one head's K (or V)
  // The window layer `layer` keeps only (0: it keeps the whole context), and the positions a
  // resident head block of it holds (a ring slot holding one of its groups uses the same rows).
  int64_t window(int64_t layer) const { return layers_[static_cast<size_t>(layer)].window; }
  int64_t layer_rows(int64_t layer) const { return layers_[static_cast<size_t>(layer)].device_rows; }

  Tier tier(int64_t layer, int64_t group) const { return groups_[index(layer, group)].tier; }

  // A resident group's storage (DeviceGroup's layout; rows = layer_rows(layer)).
  DeviceGroup resident_group(int64_t layer, int64_t group) const;
  // Row 0 (position origin) of resident kv head `kv_head`'s K or V block.
  void* k_block(int64_t layer, int64_t kv_head) const;
  void* v_block(int64_t layer, int64_t kv_head) const;
  // Makes resident group (layer, group) of a window layer hold a chunk [pos0, end) next to its
  // visible past [first visible key, pos0): when the chunk would run past the block's end, that
  // past moves to the front (one copy queued on the device's compute stream) and the origin with
  // it. Idempotent, and a no-op for layers that keep the whole context. Throws Error when the
  // past is no longer held (a cut back before it) or the chunk is longer than the block allows.
  void make_room(int64_t layer, int64_t group, int64_t pos0, int64_t end);
  // Whether make_room(layer, group, ., end) would move the block (forgetting its oldest rows).
  bool slides(int64_t layer, int64_t group, int64_t end) const;
  // Makes resident group (layer, group) able to take rows [begin, end) (KV snapshots, random
  // fills, which then write every head of the group): when they do not fit where the block is,
  // it moves to origin `begin`, forgetting what it held.
  void rebase(int64_t layer, int64_t group, int64_t begin, int64_t end);

  // The host tier, slab-major: slab j of a host-tier group holds positions [j S, j S + rows_j) of
  // its G heads as [2][G][rows_j][head_dim] (rows_j = S, the last slab's capacity - j S), so the
  // rows of the whole group are one 2-D copy of 2G rows per slab. A window layer's group keeps a
  // ring of fewer slabs instead (Plan::layers: slab j in ring slab j mod N, each of S rows), so
  // only the last N S positions it reached are kept. Slabs are only ever added (reserve), never
  // moved or freed before the store is destroyed: a copy or host task in flight may read any slab
  // it was queued with.
  int64_t slab_positions() const { return slab_positions_; }  // S
  int64_t n_slabs() const { return n_slabs_; }                // slabs of the context
  int64_t slab_rows(int64_t slab) const;                      // rows_j
  // Makes sure host-tier group (layer, group) has slabs for positions [0, end) (a ring: for the
  // last of them): allocates the missing ones (pinning them on CUDA) and maps a ring's slabs.
  // Call before queueing any copy that touches those rows.
  void reserve(int64_t layer, int64_t group, int64_t end);
  int64_t reserved(int64_t layer, int64_t group) const;  // positions its slabs reach
  // The first position group (layer, group) still holds: 0, unless it keeps only a window (a
  // resident block's origin, the first position of a host ring's oldest slab).
  int64_t kept_from(int64_t layer, int64_t group) const;
  // Host-tier head `kv_head`'s K (which 0) or V (1) row at position `pos` (reserved and kept).
  void* host_row(int64_t layer, int64_t kv_head, int which, int64_t pos) const;
  // Its K or V as pages for the host attention: [n_slabs()] pointers, page j = slab j's rows of
  // that head (nullptr before reserve reached it; a ring's page j points at ring slab j mod N, so
  // only the pages of positions still kept are current). The array itself never moves.
  const void* const* host_pages(int64_t layer, int64_t kv_head, int which) const;

  // Copies of rows [begin, end) of every head of host-tier group (layer, group) from (to) a device
  // group (a ring slot), queued on `stream`: one 2-D copy of 2G rows per slab the range touches,
  // with the slab's pitch on the host side. The rows must be reserved and kept, and inside the
  // device group's [origin, origin + rows).
  void copy_to_device(Stream& stream, int64_t layer, int64_t group, const DeviceGroup& device_group, int64_t begin,
                      int64_t end) const;
  void copy_from_device(Stream& stream, int64_t layer, int64_t group, const DeviceGroup& device_group,
                        int64_t begin, int64_t end) const;

  // Positions written so far (the same for every head block). Writers append; reset() forgets
  // (allocated slabs are kept for the next context).
  int64_t length() const { return length_; }
  void set_length(int64_t n);
  void reset();

  size_t bytes_gpu() const { return bytes_gpu_; }
  size_t bytes_host() const { return bytes_host_; }  // allocated so far

 private:
  struct Group {
    Tier tier = Tier::Gpu;
    int64_t window = 0;              // LayerKv::window of its layer
    void* base = nullptr;            // resident: [2][G][rows][head_dim], row r = position origin + r
    int64_t rows = 0;                // resident
    int64_t origin = 0;              // resident
    int64_t ring = 0;                // host: physical slabs (n_slabs, or a window layer's ring of fewer)
    std::vector<void*> slabs;        // host: [ring], nullptr until allocated
    int64_t n_allocated = 0;         // host: physical slabs allocated (a prefix)
    int64_t n_mapped = 0;            // host: slabs of the context mapped (a ring: since the last reset)
    std::vector<const void*> pages;  // host: [2][G][n_slabs]: (K or V, head j, slab) -> that head's rows in it
  };
  void release();
  size_t index(int64_t layer, int64_t group) const { return static_cast<size_t>(layer * groups_per_layer_ + group); }
  const Group& host_group(int64_t layer, int64_t group) const;
  Group& resident(int64_t layer, int64_t group);
  const Group& resident(int64_t layer, int64_t group) const;
  bool is_ring(const Group& grp) const { return grp.ring < n_slabs_; }
  int64_t physical_rows(const Group& grp, int64_t slab) const;  // rows of the physical slab holding slab `slab`
  int64_t first_kept(const Group& grp) const;
  template <class Fn>
  void for_each_slab(const Group& grp, int64_t begin, int64_t end, Fn&& fn) const;

  Device& device_;
  Transfer& transfer_;
  const int64_t capacity_;
  const int64_t head_dim_;
  const int64_t group_size_;
  const int64_t groups_per_layer_;
  const DType dtype_;
  const size_t elem_bytes_;
  const size_t row_bytes_;
  const int64_t slab_positions_;
  const int64_t n_slabs_;
  const std::vector<LayerKv> layers_;  // [n_layers]: Plan::layers
  std::vector<Group> groups_;          // [n_layers * groups_per_layer]
  int64_t length_ = 0;
  size_t bytes_gpu_ = 0;
  size_t bytes_host_ = 0;
};

// The offload KV cache: a HeadStore placed as `plan` says, a ring of plan.ring_depth device slots
// for streamed groups, and copy streams from `transfer` (owned by the cache). Every placement
// gives bit-identical attention: each head attends over one contiguous run of its keys, exactly
// as when everything is resident. With CPU-attended groups in the plan (hybrid decode), decode
// steps attend those on the host with `host_threads` threads (0: every core); they then equal
// the device's attention up to the host kernel's fp32 rounding. Throws Error if the plan does
// not fit.
std::unique_ptr<KvCache> make_offload_kv_cache(Device& device, std::unique_ptr<Transfer> transfer,
                                               const ModelConfig& config, const Plan& plan, int host_threads = 0,
                                               DType kv_dtype = DType::F32);

// What the engine knows when it builds its KV store.
struct KvPlacementOptions {
  OffloadMode offload = OffloadMode::Auto;
  int64_t gpu_mem = 0;    // the device's byte cap (the budget the device was made with); 0: unlimited
  int64_t host_mem = 0;   // host-tier bytes; 0: detected (MemAvailable)
  int64_t kv_group = 0;   // 0: the planner picks
  // Weights on the device that it did not allocate (a face's tensors used in place): planned as
  // weights against gpu_mem, absent from device.bytes_in_use().
  int64_t weights_in_place_bytes = 0;
  int copy_jitter_us = 0; // CPU test aid, see CpuTransferOptions
  int64_t host_alloc_fail_after = -1;  // test aid, see TransferOptions
  int64_t host_slab_positions = 0;  // positions per host-tier slab; 0: the planner picks (tests use small ones)
  // Sliding-window layers keep only their window (Plan::layers); false: every layer keeps the
  // whole context (the reference window-trimmed runs are checked against).
  bool window_kv = true;
  HybridMode hybrid = HybridMode::Off;  // attend some host-tier groups on the CPU in decode
  int64_t cpu_groups = -1;  // hybrid auto: force this many CPU-attended groups; -1: balance by bandwidth
  double link_gbps = 0.0;   // hybrid auto: 0 = measured once and cached (bandwidth.h)
  double dram_gbps = 0.0;   // hybrid auto: host attention read rate; 0 = measured once and cached
  int host_threads = 0;     // host attention threads; 0: every core
  // Element type of the head blocks; unset: F32. The engine sets it from Device::kv_dtype (bf16 on
  // CUDA for 16-bit checkpoints, F32 for f32 checkpoints and on the CPU).
  std::optional<DType> kv_dtype;
  // The model split over n_shards devices (issue 16): plan_kv_placement plans shard `shard_rank`'s
  // share (shard_config, estimate_shard_weight_bytes); make_planned_kv_cache is given its config.
  int shard_rank = 0;
  int n_shards = 1;
};

// Plans against what is already on `device` (weights, activations: device.bytes_in_use() when
// called, of which `weight_bytes` are weights) and builds the offload cache on the device's own
// transfer (Device::make_transfer). Throws Error with the planner's message when it does not fit.
std::unique_ptr<KvCache> make_planned_kv_cache(Device& device, const ModelConfig& config, int64_t context,
                                               int64_t chunk, int64_t weight_bytes, const KvPlacementOptions& options);

// The same plan made before any weight is loaded, with the weights estimated from the config and
// the checkpoint's dtype: a cap below the weights, a ring that cannot fit or a host too small
// shows here (Plan::fits, Plan::message), before minutes of loading. chunk / mlp_chunk 0: the
// planner chooses them (make_plan); `scratch_bytes` gives the device ops' scratch for a chunk and
// MLP sub-chunk (Ops::workspace_bytes), counted with the activations.
Plan plan_kv_placement(const Checkpoint& checkpoint, int64_t context, int64_t chunk, int64_t mlp_chunk,
                       const KvPlacementOptions& options,
                       const std::function<int64_t(int64_t, int64_t)>& scratch_bytes = {});

// The plan an offload cache runs (nullptr for other KvCache implementations).
const Plan* kv_cache_plan(const KvCache& cache);
// Host-tier bytes an offload cache holds, and its transfer's host peak (0 for other caches).
size_t kv_cache_host_peak_bytes(const KvCache& cache);

}  // namespace headinfer
