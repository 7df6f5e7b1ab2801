#pragma once
// The Planner: from a model config, a context length and the memory at hand, decide which head
// blocks live on the GPU (resident) and which live in host memory and are streamed through a
// small GPU ring, and account for every byte. It runs before any work, so a placement that cannot
// fit fails with the numbers and what to change instead of failing half way through a prompt.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "headinfer/config.h"

namespace headinfer {

enum class OffloadMode {
  Auto,  // resident as many head groups as the cap allows, stream the rest
  All,   // every head group lives on the host and is streamed
  None,  // every head group is resident; fails when the KV does not fit the cap
};
std::string offload_mode_name(OffloadMode m);
// "auto" | "all" | "none"; throws Error naming `flag` otherwise.
OffloadMode parse_offload_mode(const std::string& text, const char* flag);

// Hybrid decode: the CPU attends some host-tier groups in place (host attention) while the others
// stream, so decode is bounded by link + host read bandwidth instead of the link alone.
enum class HybridMode {
  Off,   // every host-tier group streams
  Auto,  // split the host-tier groups so the CPU part and the streamed part finish together
};
std::string hybrid_mode_name(HybridMode m);
// "auto" | "off"; throws Error naming `flag` otherwise.
HybridMode parse_hybrid_mode(const std::string& text, const char* flag);

struct PlannerInput {
  ModelConfig config;
  int64_t context = 0;          // positions every head block holds
  int64_t kv_elem_bytes = 2;    // 2: bf16/f16 KV (GPU); 4: f32 (the CPU backend)
  // Bytes of weights on the device. < 0: estimated from the config and weight_elem_bytes.
  int64_t weight_bytes = -1;
  int64_t weight_elem_bytes = 2;
  // Bytes of activations, workspace and tables on the device. < 0: what Model allocates for the
  // chunk sizes below (fp32 activations).
  int64_t activation_bytes = -1;
  int64_t gpu_mem = 0;          // device memory cap in bytes; 0: unlimited
  int64_t host_mem = 0;         // host memory for host-tier KV in bytes; 0: unlimited
  double link_gbps = 0.0;       // host -> device GB/s (1e9 B/s); 0: decode time not predicted
  OffloadMode offload = OffloadMode::Auto;
  int64_t kv_group = 0;         // kv heads per group (divides n_kv_heads); 0: the planner picks
  int64_t ring_depth = 2;       // ring slots: one being attended while the next one is fetched
  // Prefill tokens per forward and MLP rows at once; 0: the planner chooses them (choose_chunk).
  int64_t chunk = 0;
  int64_t mlp_chunk = 0;
  // The device ops' scratch for a chunk and MLP sub-chunk (Ops::workspace_bytes), counted with the
  // activations when activation_bytes < 0; unset: none.
  std::function<int64_t(int64_t chunk, int64_t mlp_chunk)> scratch_bytes;
  HybridMode hybrid = HybridMode::Off;
  double dram_gbps = 0.0;       // host attention's KV read rate in GB/s (hybrid auto needs it and link_gbps)
  int64_t cpu_groups = -1;      // hybrid auto: exactly this many CPU-attended groups; -1: balanced
  // Positions per slab of the host tier (see Plan::host_slab_positions); 0: the planner picks.
  int64_t host_slab_positions = 0;
  // Sliding-window layers keep only their window (LayerKv); false: every layer keeps the whole
  // context (the reference the window-trimmed runs are checked against).
  bool window_kv = true;
};

// What the head blocks of one layer hold. A full-attention layer keeps every position of the
// context on every tier. A sliding-window layer (window W) whose chunks have at most C queries
// reads, for a chunk at p0, only the keys [p0 - W + 1, p0 + C), so it keeps:
//  - resident: a block of 2 (W - 1) + C rows holding positions [origin, origin + rows). When a
//    chunk would run past its end, the chunk's visible past (W - 1 rows) moves to the front, one
//    device copy that never overlaps itself; a decode step pays it once every W steps or so. A
//    ring slot holding the layer's group uses the same rows, so both attend one layout.
//  - host tier: a ring of N = ceil((W - 1 + C) / S) + 1 slabs of S positions (slab j of the
//    context lives in ring slab j mod N), so the slabs a chunk reads and writes are distinct and
//    positions stay absolute (the host attention reads them as pages).
// A window layer whose block would not be smaller than the context keeps the whole context
// (window 0 here).
struct LayerKv {
  int64_t window = 0;       // > 0: the layer keeps only its window; 0: the whole context
  int64_t device_rows = 0;  // positions a resident head block (and a ring slot) holds
  int64_t host_slabs = 0;   // host-tier slabs of a head block: the context's, or a ring of fewer
};
// The LayerKv of a layer with `window` (0: full attention) for a context, chunk C and slab size S.
LayerKv layer_kv(int64_t window, int64_t context, int64_t chunk, int64_t slab_positions, bool window_kv);

struct Plan {
  bool fits = false;
  std::string message;          // why it does not fit (one line: numbers and what to change)
  std::vector<std::string> warnings;

  // Shape of the placement.
  int64_t context = 0;
  int64_t group_size = 0;       // G: kv heads per group (one transfer)
  int64_t groups_per_layer = 0; // n_kv_heads / G
  int64_t n_groups = 0;         // n_layers * groups_per_layer
  int64_t n_resident_groups = 0;
  int64_t n_streamed_groups = 0;
  int64_t ring_depth = 0;       // slots actually allocated (0 when nothing is streamed)
  int64_t chunk = 0;            // C = min(chunk, context)
  int64_t mlp_chunk = 0;        // min(mlp_chunk, C)
  std::string chunk_reason;     // why this C (chosen by the planner, or given)
  int64_t kv_elem_bytes = 0;
  // resident[layer * groups_per_layer + group]: 1 = home on the GPU, 0 = home on the host.
  // Resident groups are spread evenly over the layers so every layer has compute to hide the
  // fetches of its streamed groups behind.
  std::vector<uint8_t> resident;

  // Every byte behind it.
  int64_t kv_bytes_per_token = 0;   // all layers, K and V
  int64_t head_block_bytes = 0;     // K + V of one (layer, kv head) at full context
  int64_t group_block_bytes = 0;    // G head blocks
  int64_t kv_bytes_total = 0;
  int64_t kv_bytes_gpu = 0;         // resident head blocks
  int64_t kv_bytes_host = 0;        // host-tier head blocks at full context (allocated as the context grows)
  // The host tier grows in slabs as the context grows (pinning is slow, so nothing is pinned that
  // the context has not reached): a host-tier group's slab j holds positions [j S, (j + 1) S) of its
  // G heads' K and V ([2][G][S][head_dim]; the last slab stops at the context). S is a power of
  // two near kHostSlabTargetBytes per slab of a group, so a fetch is a few large copies.
  int64_t host_slab_positions = 0;  // S
  int64_t host_slab_bytes = 0;      // one full slab of one group: 2 G S head_dim KV elements
  // Sliding-window layers keep only their window: layers[l] is what layer l's head blocks hold.
  // kv_bytes_total (= kv_bytes_gpu + kv_bytes_host) counts each group at what it keeps;
  // kv_bytes_full is every layer at the whole context, and window_saved_bytes the difference.
  std::vector<LayerKv> layers;      // [n_layers]
  int64_t n_window_layers = 0;      // layers that keep only their window
  int64_t kv_bytes_full = 0;
  int64_t window_saved_bytes = 0;
  int64_t weight_bytes = 0;
  int64_t activation_bytes = 0;
  int64_t ring_bytes = 0;           // ring_depth slots of one group, each as large as the largest streamed
                                    // group's resident block (+ hybrid new-row staging)
  int64_t slot_positions = 0;       // rows of one head in a ring slot
  int64_t gpu_bytes_total = 0;      // weights + activations + resident KV + ring
  int64_t gpu_mem = 0;              // the cap (0: unlimited)
  int64_t host_mem = 0;             // the host memory it was planned against (0: unlimited)
  // Decode at full context: every streamed group's past (a window layer's: W - 1 positions)
  // crosses the link once per token, and each token's new K/V of streamed groups goes back.
  int64_t link_bytes_per_token = 0;
  double link_gbps = 0.0;
  double decode_seconds_per_token = 0.0;  // max(link time, CPU time) of this plan (0 when link_gbps is 0)

  // Hybrid decode. Prefill chunks stream every host-tier group (the GPU is the faster attention
  // for many queries); decode steps attend the CPU-attended ones on the host instead.
  HybridMode hybrid = HybridMode::Off;
  int64_t n_cpu_groups = 0;
  // cpu_attended[layer * groups_per_layer + group]: 1 = a host-tier group the CPU attends in
  // decode. Spread evenly over the host-tier groups in layer order, so every layer has CPU work
  // and streamed work of about the same ratio to overlap.
  std::vector<uint8_t> cpu_attended;
  double dram_gbps = 0.0;
  int64_t cpu_bytes_per_token = 0;         // host KV the CPU reads per decoded token at full context
  double cpu_seconds_per_token = 0.0;      // at dram_gbps
  double link_seconds_per_token = 0.0;     // at link_gbps
  double streaming_seconds_per_token = 0.0;  // the same placement with hybrid off, for comparison

  bool is_resident(int64_t layer, int64_t group) const {
    return resident[static_cast<size_t>(layer * groups_per_layer + group)] != 0;
  }
  bool is_cpu_attended(int64_t layer, int64_t group) const {
    return !cpu_attended.empty() && cpu_attended[static_cast<size_t>(layer * groups_per_layer + group)] != 0;
  }
};

// With input.chunk == 0 the planner chooses the prefill chunk C (and with mlp_chunk == 0 the MLP
// sub-chunk M), then plans with them: the largest C up to kMaxAutoChunk and the context whose plan
// fits, where a C above kMinCappedChunk must also keep its activations and scratch within
// kChunkShareOfFree of what the weights leave under the cap whenever some KV streams (the rest of
// the GPU memory holds resident KV, which decode reads at device speed rather than link speed).
// M = min(C, kMaxAutoMlpChunk). Plan::chunk_reason says which bound decided.
Plan make_plan(const PlannerInput& input);

// Chunks above this gain nothing measurable: at 8K-16K rows the GEMMs run at the tensor cores'
// rate and a long prefill's chunks are few; their activations only take memory from the KV.
inline constexpr int64_t kMaxAutoChunk = 16384;
inline constexpr int64_t kMaxAutoMlpChunk = 4096;
inline constexpr int64_t kMinCappedChunk = 512;
inline constexpr int64_t kChunkShareOfFree = 4;  // activations may take 1/4 of the memory the weights leave

// The planner's slab size target: 16 MiB per slab of one group. A 1M-token context of llama3-8b
// (G = 2, bf16) is then 64 slabs of 16K positions, so a fetch is 64 copies of 4 MiB rows, and a
// short prompt pins one slab per host-tier group (about 2 GiB rather than the context's 128 GiB).
inline constexpr int64_t kHostSlabTargetBytes = int64_t{16} << 20;

// Parameters the model loads onto the device, times their element size.
int64_t estimate_weight_bytes(const ModelConfig& config, int64_t weight_elem_bytes);
// What shard `rank` of `n_shards` loads (Model with a ModelShard): its heads' and ffn rows' share
// of every layer, the embedding and norms whole, and on rank 0 only the o_proj / down_proj biases
// and an untied lm_head.
int64_t estimate_shard_weight_bytes(const ModelConfig& config, int rank, int n_shards, int64_t weight_elem_bytes);
// Exactly what Model allocates on the device besides weights for these chunk sizes.
int64_t estimate_activation_bytes(const ModelConfig& config, int64_t context, int64_t chunk, int64_t mlp_chunk);
// MemAvailable from /proc/meminfo in bytes; 0 when it cannot be read.
int64_t detect_host_memory();
// "1.50 GiB", "320 B": for tables and messages.
std::string format_bytes(int64_t bytes);

}  // namespace headinfer
