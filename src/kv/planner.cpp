#include "headinfer/planner.h"

#include <algorithm>
#include <bit>
#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <tuple>

#include "headinfer/error.h"

namespace headinfer {
namespace {

std::string b(int64_t bytes) { return format_bytes(bytes); }

// Largest divisor of n_kv_heads whose ring still leaves most of the free memory to resident
// heads (a quarter at most), so the ring never crowds out residency; 1 when none does.
int64_t pick_group_size(int64_t n_kv_heads, int64_t head_block_bytes, int64_t depth, int64_t free_bytes) {
  for (int64_t g = n_kv_heads; g > 1; --g)
    if (n_kv_heads % g == 0 && depth * g * head_block_bytes <= free_bytes / 4) return g;
  return 1;
}

// Resident flags spread evenly: group i is resident when floor((i+1)R/N) > floor(iR/N).
std::vector<uint8_t> spread(int64_t n, int64_t r) {
  std::vector<uint8_t> out(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = ((i + 1) * r / n > i * r / n) ? 1 : 0;
  return out;
}

// Per decoded token at full context, with k of the host-tier groups attended on the CPU: the
// link carries the other groups' past (read_bytes: a window layer's group reads its W - 1 past
// positions, a full one the context) and every host-tier group's new row (the CPU groups' rows go
// home too); the CPU reads its groups' past. The CPU groups are spread evenly over the host-tier
// groups in layer order; hybrid auto picks the k that minimises the larger of the two times, so
// the CPU part and the streamed part finish together.
void plan_hybrid(const PlannerInput& in, const std::vector<int64_t>& read_bytes, Plan& p) {
  const ModelConfig& c = in.config;
  std::vector<int64_t> host_reads;  // [host-tier groups], in group order
  for (int64_t i = 0; i < p.n_groups; ++i)
    if (p.resident[static_cast<size_t>(i)] == 0) host_reads.push_back(read_bytes[static_cast<size_t>(i)]);
  const auto S = static_cast<int64_t>(host_reads.size());
  const int64_t row_bytes = 2 * p.group_size * c.head_dim * in.kv_elem_bytes;
  // (link bytes, CPU bytes) per token with k CPU groups.
  auto split = [&](int64_t k) {
    const std::vector<uint8_t> pick = spread(S, k);
    std::pair<int64_t, int64_t> bytes{S * row_bytes, 0};
    for (size_t i = 0; i < host_reads.size(); ++i) (pick[i] != 0 ? bytes.second : bytes.first) += host_reads[i];
    return bytes;
  };
  auto seconds = [](int64_t bytes, double gbps) { return gbps > 0 ? static_cast<double>(bytes) / (gbps * 1e9) : 0.0; };
  p.hybrid = in.hybrid;
  p.dram_gbps = in.dram_gbps;
  p.streaming_seconds_per_token = seconds(split(0).first, in.link_gbps);
  int64_t k = 0;
  if (in.hybrid == HybridMode::Auto) {
    if (in.cpu_groups > S)
      throw Error("--cpu-groups " + std::to_string(in.cpu_groups) + " is more than the " + std::to_string(S) +
                  " host-tier groups of this plan");
    if (in.cpu_groups >= 0) {
      k = in.cpu_groups;
    } else if (S > 0) {
      if (in.link_gbps <= 0 || in.dram_gbps <= 0)
        throw Error("--hybrid auto needs the link and host read bandwidths (measured, or --link-gbps and --dram-gbps)");
      double best = 1e300;
      for (int64_t cand = 0; cand <= S; ++cand) {
        const auto [link, cpu] = split(cand);
        const double t = std::max(seconds(link, in.link_gbps), seconds(cpu, in.dram_gbps));
        if (t < best) {
          best = t;
          k = cand;
        }
      }
    }
  }
  p.n_cpu_groups = k;
  p.cpu_attended.assign(static_cast<size_t>(p.n_groups), 0);
  const std::vector<uint8_t> pick = spread(S, k);
  for (int64_t i = 0, host = 0; i < p.n_groups; ++i)
    if (p.resident[static_cast<size_t>(i)] == 0) p.cpu_attended[static_cast<size_t>(i)] = pick[static_cast<size_t>(host++)];
  std::tie(p.link_bytes_per_token, p.cpu_bytes_per_token) = split(k);
  p.link_seconds_per_token = seconds(p.link_bytes_per_token, in.link_gbps);
  p.cpu_seconds_per_token = seconds(p.cpu_bytes_per_token, in.dram_gbps);
  p.decode_seconds_per_token = std::max(p.link_seconds_per_token, p.cpu_seconds_per_token);
}

}  // namespace

std::string offload_mode_name(OffloadMode m) {
  switch (m) {
    case OffloadMode::Auto: return "auto";
    case OffloadMode::All: return "all";
    case OffloadMode::None: return "none";
  }
  return "auto";
}

OffloadMode parse_offload_mode(const std::string& text, const char* flag) {
  if (text == "auto") return OffloadMode::Auto;
  if (text == "all") return OffloadMode::All;
  if (text == "none") return OffloadMode::None;
  throw Error(std::string(flag) + ": '" + text + "' is not an offload mode (auto, all or none)");
}

std::string hybrid_mode_name(HybridMode m) { return m == HybridMode::Auto ? "auto" : "off"; }

HybridMode parse_hybrid_mode(const std::string& text, const char* flag) {
  if (text == "auto") return HybridMode::Auto;
  if (text == "off") return HybridMode::Off;
  throw Error(std::string(flag) + ": '" + text + "' is not a hybrid mode (auto or off)");
}

std::string format_bytes(int64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 5) {
    v /= 1024.0;
    ++u;
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.2f %s", v, kUnits[u]);
  return buf;
}

LayerKv layer_kv(int64_t window, int64_t context, int64_t chunk, int64_t slab_positions, bool window_kv) {
  if (context < 1 || chunk < 1 || slab_positions < 1) throw Error("layer KV: context, chunk and slab must be positive");
  const int64_t n_slabs = (context + slab_positions - 1) / slab_positions;
  const LayerKv whole{0, context, n_slabs};
  // 2 (W - 1) + C < context, written so that no term overflows.
  if (!window_kv || window <= 0 || window - 1 >= context || chunk >= context - 2 * (window - 1)) return whole;
  const int64_t rows = 2 * (window - 1) + chunk;
  const int64_t ring = (window - 1 + chunk + slab_positions - 1) / slab_positions + 1;
  return {window, rows, std::min(ring, n_slabs)};
}

int64_t estimate_weight_bytes(const ModelConfig& c, int64_t elem) {
  const int64_t h = c.hidden_size;
  int64_t per_layer = c.q_dim() * h + 2 * c.kv_dim() * h       // q, k, v
                      + h * c.q_dim()                          // o
                      + 3 * c.intermediate_size * h;           // gate, up, down
  int64_t norms = (c.sandwich_norms ? 4 : 2) * h;              // input, post-attention (gemma: 2 more)
  if (c.qkv_bias) per_layer += c.q_dim() + 2 * c.kv_dim();
  if (c.o_bias) per_layer += h;
  if (c.qk_norm) norms += 2 * c.head_dim;
  if (c.mlp_bias) per_layer += 2 * c.intermediate_size + h;
  const int64_t params = c.vocab_size * h * (c.tie_word_embeddings ? 1 : 2) + c.n_layers * per_layer;
  // (1 + w) norms are held as fp32 (Model folds the 1 in at load).
  return params * elem + (h + c.n_layers * norms) * (c.norm_plus_one ? 4 : elem);
}

int64_t estimate_shard_weight_bytes(const ModelConfig& config, int rank, int n_shards, int64_t elem) {
  const ModelConfig c = shard_config(config, rank, n_shards);
  int64_t bytes = estimate_weight_bytes(c, elem);
  if (rank != 0) {
    int64_t rank0_only = 0;
    if (c.o_bias) rank0_only += c.n_layers * c.hidden_size;
    if (c.mlp_bias) rank0_only += c.n_layers * c.hidden_size;
    if (!c.tie_word_embeddings) rank0_only += c.vocab_size * c.hidden_size;
    bytes -= rank0_only * elem;
  }
  return bytes;
}

int64_t estimate_activation_bytes(const ModelConfig& c, int64_t context, int64_t chunk, int64_t mlp_chunk) {
  // Mirrors Model's workspace: x, xn, proj [C, hidden]; q, attn [C, q_dim]; k, v [C, kv_dim];
  // lse [C, n_heads]; gate, up [M, ffn]; logits [vocab]; rope tables [rotary_dim / 2] (longrope's
  // long one and gemma3's local one besides). All fp32; and the int32 argmax of the logits (4 bytes,
  // counted as one float).
  const int64_t C = std::min(chunk, context), M = std::min(mlp_chunk, C);
  const int64_t rotary = c.rotary_dim > 0 ? c.rotary_dim : c.head_dim;
  const int64_t rope_tables = 1 + (c.rope.type == RopeType::Longrope ? 1 : 0) + (c.has_local_rope ? 1 : 0);
  const int64_t floats = 3 * C * c.hidden_size + 2 * C * c.q_dim() + 2 * C * c.kv_dim() + C * c.n_heads +
                         2 * M * c.intermediate_size + c.vocab_size + rope_tables * (rotary / 2) + 1;
  return floats * 4;
}

int64_t detect_host_memory() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("MemAvailable:", 0) != 0) continue;
    std::istringstream s(line.substr(13));
    int64_t kib = 0;
    s >> kib;
    return kib * 1024;
  }
  return 0;
}

namespace {

Plan plan_with_chunks(const PlannerInput& in);

int64_t auto_mlp_chunk(const PlannerInput& in, int64_t chunk) {
  return std::min(chunk, in.mlp_chunk > 0 ? in.mlp_chunk : kMaxAutoMlpChunk);
}

// Candidates from the largest down: min(kMaxAutoChunk, context), then the powers of two below it.
Plan choose_chunk(const PlannerInput& in) {
  const int64_t top = std::min(kMaxAutoChunk, in.context);
  const bool capped = in.gpu_mem > 0;
  bool share_bound = false;  // a larger candidate fitted but took more than its share
  Plan last;
  for (int64_t c = top; c >= 1;) {
    PlannerInput t = in;
    t.chunk = c;
    t.mlp_chunk = auto_mlp_chunk(in, c);
    Plan p = plan_with_chunks(t);
    const int64_t left = in.gpu_mem - p.weight_bytes;  // what the weights leave under the cap
    const bool within_share = !capped || p.n_streamed_groups == 0 || c <= kMinCappedChunk ||
                              p.activation_bytes * kChunkShareOfFree <= left;
    if (p.fits && within_share) {
      if (c == top)
        p.chunk_reason = c == in.context ? "chosen: the whole context in one chunk"
                                         : "chosen: the largest (" + std::to_string(kMaxAutoChunk) + ")";
      else if (share_bound)
        p.chunk_reason = "chosen: the largest whose activations and scratch (" + format_bytes(p.activation_bytes) +
                         ") stay within 1/" + std::to_string(kChunkShareOfFree) + " of the " + format_bytes(left) +
                         " the weights leave, the rest holding KV";
      else
        p.chunk_reason = "chosen: the largest that fits --gpu-mem";
      return p;
    }
    share_bound = share_bound || p.fits;
    last = std::move(p);
    const auto below = static_cast<int64_t>(std::bit_floor(static_cast<uint64_t>(c)));
    c = below == c ? c / 2 : below;
  }
  last.chunk_reason = "nothing fits, even at 1 token per chunk";
  return last;
}

}  // namespace

Plan make_plan(const PlannerInput& in) {
  if (in.context < 1) throw Error("--ctx must be at least 1 token");
  if (in.chunk < 0) throw Error("--chunk must be at least 1 (0: the planner chooses)");
  if (in.mlp_chunk < 0) throw Error("MLP chunk must be at least 1 (0: the planner chooses)");
  if (in.chunk == 0) return choose_chunk(in);
  PlannerInput t = in;
  if (t.mlp_chunk == 0) t.mlp_chunk = auto_mlp_chunk(in, std::min(in.chunk, in.context));
  Plan p = plan_with_chunks(t);
  p.chunk_reason = "given (--chunk)";
  return p;
}

namespace {

Plan plan_with_chunks(const PlannerInput& in) {
  const ModelConfig& c = in.config;
  if (in.kv_elem_bytes < 1) throw Error("KV element size must be positive");
  if (in.ring_depth < 1) throw Error("ring depth must be at least 1");
  if (in.gpu_mem < 0 || in.host_mem < 0) throw Error("memory sizes must not be negative");
  if (c.n_layers < 1 || c.n_kv_heads < 1 || c.head_dim < 1) throw Error("model config has no attention heads");
  if (in.host_slab_positions < 0) throw Error("host slab positions must not be negative");
  if (in.kv_group < 0 || (in.kv_group > 0 && c.n_kv_heads % in.kv_group != 0))
    throw Error("--kv-group " + std::to_string(in.kv_group) + " does not divide the model's " +
                std::to_string(c.n_kv_heads) + " kv heads");

  Plan p;
  p.context = in.context;
  p.chunk = std::min(in.chunk, in.context);
  p.mlp_chunk = std::min(in.mlp_chunk, p.chunk);
  p.kv_elem_bytes = in.kv_elem_bytes;
  p.gpu_mem = in.gpu_mem;
  p.host_mem = in.host_mem;
  p.link_gbps = in.link_gbps;
  p.kv_bytes_per_token = c.kv_bytes_per_token(in.kv_elem_bytes);
  p.head_block_bytes = 2 * in.context * c.head_dim * in.kv_elem_bytes;
  p.kv_bytes_total = p.kv_bytes_per_token * in.context;
  p.weight_bytes = in.weight_bytes >= 0 ? in.weight_bytes : estimate_weight_bytes(c, in.weight_elem_bytes);
  p.activation_bytes = in.activation_bytes >= 0
                           ? in.activation_bytes
                           : estimate_activation_bytes(c, in.context, in.chunk, in.mlp_chunk) +
                                 (in.scratch_bytes ? in.scratch_bytes(p.chunk, p.mlp_chunk) : 0);
  if (c.max_position_embeddings > 0 && in.context > c.max_position_embeddings)
    p.warnings.push_back("context " + std::to_string(in.context) + " is beyond the config's max_position_embeddings (" +
                         std::to_string(c.max_position_embeddings) + ")");

  const bool capped = in.gpu_mem > 0;
  const int64_t fixed = p.weight_bytes + p.activation_bytes;
  const int64_t free_bytes = capped ? in.gpu_mem - fixed : INT64_MAX;

  // What every layer keeps, whatever the group size: resident blocks and ring slots hold
  // device_rows positions per head. The slab size S depends on the group size and matters only
  // for the host tier's rings, so the layers are computed again with it below.
  const int64_t d = c.head_dim, e = in.kv_elem_bytes;
  auto window_of = [&](int64_t l) {
    return static_cast<size_t>(l) < c.layer_window.size() ? c.layer_window[static_cast<size_t>(l)] : int64_t{0};
  };
  int64_t all_resident = 0, max_rows = 0;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerKv k = layer_kv(window_of(l), in.context, p.chunk, 1, in.window_kv);
    all_resident += 2 * c.n_kv_heads * d * e * k.device_rows;
    max_rows = std::max(max_rows, k.device_rows);
  }

  // Group size first (it sets the transfer unit and the ring), then how many groups stay resident.
  const bool all_fit = !capped || all_resident <= free_bytes;
  int64_t g = in.kv_group;
  if (g == 0) {
    const bool streams = in.offload == OffloadMode::All || (in.offload == OffloadMode::Auto && !all_fit);
    g = (streams && capped) ? pick_group_size(c.n_kv_heads, 2 * max_rows * d * e, in.ring_depth, free_bytes)
                            : c.n_kv_heads;
  }
  p.group_size = g;
  p.groups_per_layer = c.n_kv_heads / g;
  p.n_groups = c.n_layers * p.groups_per_layer;
  p.group_block_bytes = g * p.head_block_bytes;
  const int64_t n = p.n_groups, gpl = p.groups_per_layer;
  const int64_t position_bytes = 2 * g * d * e;  // one position of a group's K and V
  // Slab size: the largest power of two of positions whose group slab fits the target (at least 1).
  int64_t slab = in.host_slab_positions;
  if (slab == 0) {
    slab = 1;
    while (slab * 2 * position_bytes <= kHostSlabTargetBytes) slab *= 2;
  }
  p.host_slab_positions = slab;
  p.host_slab_bytes = std::min(slab, in.context) * position_bytes;
  const int64_t n_slabs = (in.context + slab - 1) / slab;
  p.layers.clear();
  for (int64_t l = 0; l < c.n_layers; ++l) {
    p.layers.push_back(layer_kv(window_of(l), in.context, p.chunk, slab, in.window_kv));
    if (p.layers.back().window > 0) ++p.n_window_layers;
  }
  // Per group (layer-major): bytes resident, bytes on the host tier, past read per decoded token.
  std::vector<int64_t> device_bytes(static_cast<size_t>(n)), host_bytes(static_cast<size_t>(n)),
      read_bytes(static_cast<size_t>(n));
  std::vector<int64_t> full_groups, window_groups;  // group indices of each kind
  for (int64_t i = 0; i < n; ++i) {
    const LayerKv& k = p.layers[static_cast<size_t>(i / gpl)];
    device_bytes[static_cast<size_t>(i)] = position_bytes * k.device_rows;
    host_bytes[static_cast<size_t>(i)] = position_bytes * (k.host_slabs < n_slabs ? k.host_slabs * slab : in.context);
    read_bytes[static_cast<size_t>(i)] = k.window > 0 ? position_bytes * (k.window - 1) : p.group_block_bytes;
    (k.window > 0 ? window_groups : full_groups).push_back(i);
  }
  p.kv_bytes_full = p.kv_bytes_total;
  // Hybrid decode converts the CPU groups' new rows on the device before they go home: at most one
  // layer's K and V rows, kept next to the ring (it exists only while some group streams).
  const int64_t hybrid_staging = in.hybrid == HybridMode::Auto ? 2 * c.n_kv_heads * d * e : 0;
  // r resident groups: full-context groups first, spread evenly over their layers, then window
  // groups, spread evenly. A resident byte of a full group saves a streamed byte per decoded
  // token; a window group's block keeps 2 (W - 1) + C positions to save W - 1 of them.
  auto resident_set = [&](int64_t r) {
    std::vector<uint8_t> set(static_cast<size_t>(n), 0);
    const auto n_full = static_cast<int64_t>(full_groups.size());
    const std::vector<uint8_t> full = spread(n_full, std::min(r, n_full));
    const std::vector<uint8_t> window =
        spread(static_cast<int64_t>(window_groups.size()), std::max<int64_t>(0, r - n_full));
    for (size_t i = 0; i < full.size(); ++i) set[static_cast<size_t>(full_groups[i])] = full[i];
    for (size_t i = 0; i < window.size(); ++i) set[static_cast<size_t>(window_groups[i])] = window[i];
    return set;
  };
  struct Placement {
    int64_t gpu = 0, host = 0, ring = 0, slot_rows = 0;
  };
  auto place = [&](const std::vector<uint8_t>& set, int64_t r) {
    Placement pl;
    for (int64_t i = 0; i < n; ++i) {
      if (set[static_cast<size_t>(i)] != 0) {
        pl.gpu += device_bytes[static_cast<size_t>(i)];
      } else {
        pl.host += host_bytes[static_cast<size_t>(i)];
        pl.slot_rows = std::max(pl.slot_rows, p.layers[static_cast<size_t>(i / gpl)].device_rows);
      }
    }
    if (n > r) pl.ring = std::min(in.ring_depth, n - r) * position_bytes * pl.slot_rows + hybrid_staging;
    return pl;
  };

  int64_t r = 0;
  switch (in.offload) {
    case OffloadMode::None: r = n; break;
    case OffloadMode::All: r = 0; break;
    case OffloadMode::Auto:
      if (!capped || free_bytes < 0) {
        r = capped ? 0 : n;
      } else {
        // The most resident groups that fit next to their ring (which shrinks once every
        // full-context group is resident, so search from the top).
        for (r = n; r > 0; --r) {
          const Placement pl = place(resident_set(r), r);
          if (pl.gpu + pl.ring <= free_bytes) break;
        }
      }
      break;
  }
  p.resident = resident_set(r);
  const Placement pl = place(p.resident, r);
  p.n_resident_groups = r;
  p.n_streamed_groups = n - r;
  p.ring_depth = std::min(in.ring_depth, n - r);
  p.ring_bytes = pl.ring;
  p.slot_positions = pl.slot_rows;
  p.kv_bytes_gpu = pl.gpu;
  p.kv_bytes_host = pl.host;
  p.kv_bytes_total = pl.gpu + pl.host;
  p.window_saved_bytes = p.kv_bytes_full - p.kv_bytes_total;
  p.gpu_bytes_total = fixed + p.kv_bytes_gpu + p.ring_bytes;
  plan_hybrid(in, read_bytes, p);

  // Fit checks, most basic first, each naming the numbers and the knob.
  const std::string cap = b(in.gpu_mem);
  if (capped && p.weight_bytes > in.gpu_mem) {
    p.message = "the weights alone need " + b(p.weight_bytes) + " but --gpu-mem is " + cap +
                ": raise --gpu-mem above " + b(fixed);
  } else if (capped && fixed > in.gpu_mem) {
    p.message = "weights " + b(p.weight_bytes) + " + activations " + b(p.activation_bytes) + " (chunk " +
                std::to_string(p.chunk) + ") = " + b(fixed) + " exceed --gpu-mem " + cap +
                ": raise --gpu-mem or lower --chunk";
  } else if (capped && in.offload == OffloadMode::None && p.gpu_bytes_total > in.gpu_mem) {
    p.message = "--offload none keeps all " + b(p.kv_bytes_total) + " of KV (" + std::to_string(in.context) +
                " tokens" + (p.n_window_layers > 0 ? ", window layers at their window" : "") + ") on the GPU, but only " +
                b(free_bytes) + " of --gpu-mem " + cap +
                " is left after weights and activations: use --offload auto, raise --gpu-mem or lower --ctx";
  } else if (capped && p.gpu_bytes_total > in.gpu_mem) {
    p.message = "a ring of " + std::to_string(p.ring_depth) + " slots for a group of " + std::to_string(g) +
                " kv head(s) at " + std::to_string(p.slot_positions) + " positions needs " + b(p.ring_bytes) +
                " but only " + b(free_bytes) + " of --gpu-mem " + cap +
                " is left after weights and activations: raise --gpu-mem, lower --ctx" +
                (g > 1 ? " or use a smaller --kv-group" : "");
  } else if (in.host_mem > 0 && p.kv_bytes_host > in.host_mem) {
    int64_t host_per_token = 0;  // the host-tier groups that keep the whole context grow with it
    for (int64_t i = 0; i < n; ++i)
      if (p.resident[static_cast<size_t>(i)] == 0 && p.layers[static_cast<size_t>(i / gpl)].window == 0)
        host_per_token += position_bytes;
    p.message = "host-tier KV needs " + b(p.kv_bytes_host) + " (" + std::to_string(p.n_streamed_groups * g) +
                " head blocks at " + std::to_string(in.context) + " tokens) but host memory is " + b(in.host_mem) +
                ": raise --host-mem, raise --gpu-mem to keep more heads resident" +
                (host_per_token > 0 ? ", or lower --ctx to about " + std::to_string(in.host_mem / host_per_token) + " tokens"
                                    : std::string());
  } else {
    p.fits = true;
  }
  return p;
}

}  // namespace

}  // namespace headinfer
