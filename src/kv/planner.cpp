#include "headinfer/planner.h"

#include <algorithm>
#include <bit>
#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <sstream>

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

// Per decoded token at full context, with k of the S host-tier groups attended on the CPU: the
// link carries the other S - k groups' past and every host-tier group's new row (the CPU groups'
// rows go home too); the CPU reads k groups' past. Hybrid auto picks the k that minimises the
// larger of the two times, so the CPU part and the streamed part finish together.
void plan_hybrid(const PlannerInput& in, Plan& p) {
  const ModelConfig& c = in.config;
  const int64_t S = p.n_streamed_groups, gb = p.group_block_bytes;
  const int64_t row_bytes = 2 * p.group_size * c.head_dim * in.kv_elem_bytes;
  auto link_bytes = [&](int64_t k) { return (S - k) * gb + S * row_bytes; };
  auto seconds = [](int64_t bytes, double gbps) { return gbps > 0 ? static_cast<double>(bytes) / (gbps * 1e9) : 0.0; };
  p.hybrid = in.hybrid;
  p.dram_gbps = in.dram_gbps;
  p.streaming_seconds_per_token = seconds(link_bytes(0), in.link_gbps);
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
        const double t = std::max(seconds(link_bytes(cand), in.link_gbps), seconds(cand * gb, in.dram_gbps));
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
  p.link_bytes_per_token = link_bytes(k);
  p.cpu_bytes_per_token = k * gb;
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

int64_t estimate_weight_bytes(const ModelConfig& c, int64_t elem) {
  const int64_t h = c.hidden_size;
  int64_t per_layer = 2 * h                                    // input and post-attention norms
                      + c.q_dim() * h + 2 * c.kv_dim() * h     // q, k, v
                      + h * c.q_dim()                          // o
                      + 3 * c.intermediate_size * h;           // gate, up, down
  if (c.qkv_bias) per_layer += c.q_dim() + 2 * c.kv_dim();
  if (c.o_bias) per_layer += h;
  if (c.qk_norm) per_layer += 2 * c.head_dim;
  if (c.mlp_bias) per_layer += 2 * c.intermediate_size + h;
  const int64_t params = c.vocab_size * h * (c.tie_word_embeddings ? 1 : 2) + h + c.n_layers * per_layer;
  return params * elem;
}

int64_t estimate_activation_bytes(const ModelConfig& c, int64_t context, int64_t chunk, int64_t mlp_chunk) {
  // Mirrors Model's workspace: x, xn, proj [C, hidden]; q, attn [C, q_dim]; k, v [C, kv_dim];
  // lse [C, n_heads]; gate, up [M, ffn]; logits [vocab]; rope table [head_dim / 2]. All fp32; and
  // the int32 argmax of the logits (4 bytes, counted as one float).
  const int64_t C = std::min(chunk, context), M = std::min(mlp_chunk, C);
  const int64_t floats = 3 * C * c.hidden_size + 2 * C * c.q_dim() + 2 * C * c.kv_dim() + C * c.n_heads +
                         2 * M * c.intermediate_size + c.vocab_size + c.head_dim / 2 + 1;
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

  // Group size first (it sets the transfer unit and the ring), then how many groups stay resident.
  const bool all_fit = !capped || p.kv_bytes_total <= free_bytes;
  int64_t g = in.kv_group;
  if (g == 0) {
    const bool streams = in.offload == OffloadMode::All || (in.offload == OffloadMode::Auto && !all_fit);
    g = (streams && capped) ? pick_group_size(c.n_kv_heads, p.head_block_bytes, in.ring_depth, free_bytes)
                            : c.n_kv_heads;
  }
  p.group_size = g;
  p.groups_per_layer = c.n_kv_heads / g;
  p.n_groups = c.n_layers * p.groups_per_layer;
  p.group_block_bytes = g * p.head_block_bytes;
  const int64_t gb = p.group_block_bytes, n = p.n_groups;
  // Hybrid decode converts the CPU groups' new rows on the device before they go home: at most one
  // layer's K and V rows, kept next to the ring (it exists only while some group streams).
  const int64_t hybrid_staging = in.hybrid == HybridMode::Auto ? 2 * c.n_kv_heads * c.head_dim * in.kv_elem_bytes : 0;
  auto ring_for = [&](int64_t resident) {
    return n > resident ? std::min(in.ring_depth, n - resident) * gb + hybrid_staging : 0;
  };

  int64_t r = 0;
  switch (in.offload) {
    case OffloadMode::None: r = n; break;
    case OffloadMode::All: r = 0; break;
    case OffloadMode::Auto:
      if (!capped || free_bytes < 0) {
        r = capped ? 0 : n;
      } else {
        r = std::min(n, free_bytes / gb);
        while (r > 0 && r * gb + ring_for(r) > free_bytes) --r;
      }
      break;
  }
  p.n_resident_groups = r;
  p.n_streamed_groups = n - r;
  p.ring_depth = std::min(in.ring_depth, n - r);
  p.ring_bytes = ring_for(r);
  p.kv_bytes_gpu = r * gb;
  p.kv_bytes_host = (n - r) * gb;
  p.gpu_bytes_total = fixed + p.kv_bytes_gpu + p.ring_bytes;
  p.resident = spread(n, r);
  // Slab size: the largest power of two of positions whose group slab fits the target (at least 1).
  const int64_t group_bytes_per_position = 2 * g * c.head_dim * in.kv_elem_bytes;
  int64_t slab = in.host_slab_positions;
  if (slab == 0) {
    slab = 1;
    while (slab * 2 * group_bytes_per_position <= kHostSlabTargetBytes) slab *= 2;
  }
  p.host_slab_positions = slab;
  p.host_slab_bytes = std::min(slab, in.context) * group_bytes_per_position;
  plan_hybrid(in, p);

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
                " tokens x " + b(p.kv_bytes_per_token) + ") on the GPU, but only " + b(free_bytes) + " of --gpu-mem " +
                cap + " is left after weights and activations: use --offload auto, raise --gpu-mem or lower --ctx";
  } else if (capped && p.gpu_bytes_total > in.gpu_mem) {
    p.message = "a ring of " + std::to_string(p.ring_depth) + " slots for a group of " + std::to_string(g) +
                " kv head(s) at " + std::to_string(in.context) + " tokens needs " + b(p.ring_bytes) + " but only " +
                b(free_bytes) + " of --gpu-mem " + cap + " is left after weights and activations: raise --gpu-mem, " +
                "lower --ctx" + (g > 1 ? " or use a smaller --kv-group" : "");
  } else if (in.host_mem > 0 && p.kv_bytes_host > in.host_mem) {
    const int64_t host_per_token = p.n_streamed_groups * g * 2 * c.head_dim * in.kv_elem_bytes;
    p.message = "host-tier KV needs " + b(p.kv_bytes_host) + " (" + std::to_string(p.n_streamed_groups * g) +
                " head blocks at " + std::to_string(in.context) + " tokens) but host memory is " + b(in.host_mem) +
                ": raise --host-mem, raise --gpu-mem to keep more heads resident, or lower --ctx to about " +
                std::to_string(host_per_token > 0 ? in.host_mem / host_per_token : 0) + " tokens";
  } else {
    p.fits = true;
  }
  return p;
}

}  // namespace

}  // namespace headinfer
