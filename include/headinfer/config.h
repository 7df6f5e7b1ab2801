#pragma once
// ModelConfig: everything the engine needs from a checkpoint's config.json (and
// generation_config.json), normalised across transformers 4.x and 5.x key styles.
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace headinfer {

enum class RopeType { Default, Linear, Llama3, Yarn, Longrope };

// The MLP's gate activation: silu (llama family) or the tanh approximation of GELU (gemma).
enum class Activation { Silu, GeluTanh };

struct RopeConfig {
  RopeType type = RopeType::Default;
  double theta = 10000.0;
  double factor = 1.0;  // linear, llama3, yarn
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  // llama3 and yarn: the pre-training context the scaling is relative to
  int64_t original_max_position_embeddings = 0;
  // yarn
  double attention_factor = 1.0;  // multiplies cos and sin (already resolved from mscale)
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  bool truncate = true;
  // longrope (phi3): per-frequency divisors [rotary_dim / 2]; the short ones while a forward call's
  // last position + 1 is <= original_max_position_embeddings, the long ones beyond (transformers
  // picks per call, so KV computed earlier with the short ones stays as it was).
  std::vector<double> short_factor, long_factor;
};

struct ModelConfig {
  std::string model_type;  // llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3
  int64_t hidden_size = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;     // query heads
  int64_t n_kv_heads = 0;  // key/value heads (GQA: n_heads % n_kv_heads == 0)
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool qkv_bias = false;  // attention_bias (llama/mistral) or always (qwen2)
  bool o_bias = false;    // attention_bias on o_proj (llama only)
  bool mlp_bias = false;
  bool qk_norm = false;   // qwen3, gemma3: RMSNorm over head_dim on q and k before RoPE
  bool tie_word_embeddings = false;
  // Gemma: RMSNorm weights act as (1 + w) (folded into an fp32 copy at load), the embedding is
  // multiplied by sqrt(hidden) (fp32), and attention and MLP outputs pass their own norm before the
  // residual add (post_attention_layernorm then post-attention, pre/post_feedforward_layernorm).
  bool norm_plus_one = false;
  bool sandwich_norms = false;
  float embedding_scale = 0.0f;  // 0: none
  Activation activation = Activation::Silu;
  float attn_softcap = 0.0f;     // scores := tanh(scores / c) * c after scaling; 0: none
  float final_softcap = 0.0f;    // the same on the logits
  double query_pre_attn_scalar = 0.0;  // gemma: attention scale is its **-0.5; 0: head_dim**-0.5
  // Rotary dims per head (phi3 partial_rotary_factor): the first rotary_dim of head_dim rotate.
  int64_t rotary_dim = 0;
  // Sliding-window layers' own rope (gemma3 rope_local_base_freq); `rope` is then the global one.
  bool has_local_rope = false;
  RopeConfig rope_local;
  bool fused_qkv = false;  // phi3: qkv_proj and gate_up_proj, split by rows at load
  // Per layer: 0 = full attention, otherwise the window in tokens (a query at position i sees
  // keys j with i - window < j <= i, as transformers' sliding_window mask).
  std::vector<int64_t> layer_window;
  std::vector<int64_t> eos_token_ids;
  int64_t bos_token_id = -1;  // -1: none

  // Layer l's window (0: full attention).
  int64_t window(int64_t layer) const {
    return static_cast<size_t>(layer) < layer_window.size() ? layer_window[static_cast<size_t>(layer)] : 0;
  }
  // The first key a chunk of queries starting at `pos` sees in `layer`: pos - window + 1 (not
  // below 0) in a sliding-window layer, 0 in a full one.
  int64_t first_visible_key(int64_t layer, int64_t pos) const {
    const int64_t w = window(layer);
    return w > 0 && pos - w + 1 > 0 ? pos - w + 1 : 0;
  }
  int64_t q_dim() const { return n_heads * head_dim; }
  int64_t kv_dim() const { return n_kv_heads * head_dim; }
  int64_t group_size() const { return n_heads / n_kv_heads; }
  // What q.k is multiplied by, as transformers rounds it (a Python float times an fp32 tensor).
  float attention_scale() const {
    const double base = query_pre_attn_scalar > 0.0 ? query_pre_attn_scalar : static_cast<double>(head_dim);
    return static_cast<float>(std::pow(base, -0.5));
  }
  // Bytes of K and V per token over all layers for a KV element size (2 for bf16).
  int64_t kv_bytes_per_token(int64_t elem_bytes) const {
    return 2 * n_layers * n_kv_heads * head_dim * elem_bytes;
  }
};

// Parses config.json text; `origin` names the file in error messages. Throws headinfer::Error.
ModelConfig parse_model_config(const nlohmann::json& config, const std::string& origin);
// Reads DIR/config.json and, when present, DIR/generation_config.json (its eos ids win).
ModelConfig load_model_config(const std::filesystem::path& path);
// generation_config.json's fields over a parsed config: its eos ids (checked against the
// vocabulary) and bos id win. `origin` names it in error messages.
void apply_generation_config(ModelConfig& config, const nlohmann::json& generation_config, const std::string& origin);

std::string rope_type_name(RopeType t);

// Tensor parallelism by kv head (issue 16; Model's ModelShard says what runs where).
// What shard `rank` of `n_shards` holds of each layer: kv heads [kv_head0, kv_head0 + n_kv_heads)
// and MLP intermediate rows [ffn0, ffn0 + n_ffn). Throws Error naming the counts when n_kv_heads
// is not a multiple of n_shards (an uneven head split would make one link the bottleneck).
struct ShardSlice {
  int64_t kv_head0 = 0, n_kv_heads = 0;
  int64_t ffn0 = 0, n_ffn = 0;
};
ShardSlice shard_slice(const ModelConfig& config, int rank, int n_shards);
// The config a shard runs: n_heads, n_kv_heads and intermediate_size are its own share (what its
// KV cache and planner see); everything else is the model's.
ModelConfig shard_config(const ModelConfig& config, int rank, int n_shards);

}  // namespace headinfer
