#pragma once
// ModelConfig: everything the engine needs from a checkpoint's config.json (and
// generation_config.json), normalised across transformers 4.x and 5.x key styles.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace headinfer {

enum class RopeType { Default, Linear, Llama3, Yarn };

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
};

struct ModelConfig {
  std::string model_type;  // llama, mistral, qwen2, qwen3
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
  bool qk_norm = false;   // qwen3: RMSNorm over head_dim on q and k before RoPE
  bool tie_word_embeddings = false;
  // Per layer: 0 = full attention, otherwise the window in tokens (a query at position i sees
  // keys j with i - window < j <= i, as transformers' sliding_window mask).
  std::vector<int64_t> layer_window;
  std::vector<int64_t> eos_token_ids;
  int64_t bos_token_id = -1;  // -1: none

  int64_t q_dim() const { return n_heads * head_dim; }
  int64_t kv_dim() const { return n_kv_heads * head_dim; }
  int64_t group_size() const { return n_heads / n_kv_heads; }
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

}  // namespace headinfer
