#include "headinfer/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "headinfer/error.h"

namespace headinfer {
namespace {

using nlohmann::json;

struct ConfigReader {
  const json& j;
  const std::string& origin;

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw Error(origin + ": field '" + key + "' " + what);
  }

  bool has(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }

  int64_t get_int(const char* key, int64_t fallback) const {
    if (!has(key)) return fallback;
    const json& v = j.at(key);
    if (!v.is_number_integer()) fail(key, "must be an integer, got " + v.dump());
    return v.get<int64_t>();
  }

  int64_t get_positive(const char* key, int64_t fallback) const {
    int64_t v = get_int(key, fallback);
    if (v <= 0) fail(key, "must be positive, got " + std::to_string(v));
    return v;
  }

  double get_number(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    const json& v = j.at(key);
    if (!v.is_number()) fail(key, "must be a number, got " + v.dump());
    return v.get<double>();
  }

  bool get_bool(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = j.at(key);
    if (!v.is_boolean()) fail(key, "must be true or false, got " + v.dump());
    return v.get<bool>();
  }
};

// Defaults that transformers' config classes use when a key is absent.
struct ArchDefaults {
  int64_t vocab_size;
  int64_t intermediate_size;
  int64_t max_position_embeddings;
  int64_t head_dim;  // 0: hidden_size / num_attention_heads
  int64_t sliding_window;
};

ArchDefaults arch_defaults(const std::string& model_type) {
  if (model_type == "llama") return {32000, 11008, 2048, 0, 0};
  if (model_type == "mistral") return {32000, 14336, 4096 * 32, 0, 4096};
  if (model_type == "qwen2") return {151936, 22016, 32768, 0, 4096};
  return {151936, 22016, 32768, 128, 4096};  // qwen3
}

std::vector<int64_t> parse_token_ids(const json& v, const std::string& origin, const char* key) {
  std::vector<int64_t> ids;
  if (v.is_null()) return ids;
  if (v.is_number_integer()) {
    ids.push_back(v.get<int64_t>());
  } else if (v.is_array()) {
    for (const json& e : v) {
      if (!e.is_number_integer())
        throw Error(origin + ": field '" + key + "' must hold integers, got " + v.dump());
      ids.push_back(e.get<int64_t>());
    }
  } else {
    throw Error(origin + ": field '" + key + "' must be an integer or a list, got " + v.dump());
  }
  return ids;
}

// The rope block: transformers 5.x `rope_parameters`, or 4.x `rope_theta` + `rope_scaling`.
RopeConfig parse_rope(const json& config, const std::string& origin, int64_t max_pos) {
  RopeConfig rope;
  json params = json::object();
  std::string block = "rope_parameters";
  if (config.contains("rope_parameters") && !config.at("rope_parameters").is_null()) {
    params = config.at("rope_parameters");
  } else if (config.contains("rope_scaling") && !config.at("rope_scaling").is_null()) {
    params = config.at("rope_scaling");
    block = "rope_scaling";
  }
  if (!params.is_object()) throw Error(origin + ": field '" + block + "' must be an object");
  ConfigReader top{config, origin};
  ConfigReader p{params, origin};
  rope.theta = p.get_number("rope_theta", top.get_number("rope_theta", 10000.0));
  if (!(rope.theta > 1.0)) p.fail("rope_theta", "must be greater than 1");

  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (p.has(key)) {
      if (!params.at(key).is_string()) p.fail(key, "must be a string");
      type = params.at(key).get<std::string>();
      break;
    }
  }
  const std::string where = block + ".rope_type";
  auto need_factor = [&] {
    if (!p.has("factor")) throw Error(origin + ": " + block + " of type '" + type + "' needs 'factor'");
    double f = p.get_number("factor", 1.0);
    if (!(f > 0.0)) p.fail("factor", "must be positive");
    return f;
  };
  if (type == "default") {
    rope.type = RopeType::Default;
  } else if (type == "linear") {
    rope.type = RopeType::Linear;
    rope.factor = need_factor();
  } else if (type == "llama3") {
    rope.type = RopeType::Llama3;
    rope.factor = need_factor();
    rope.low_freq_factor = p.get_number("low_freq_factor", 1.0);
    rope.high_freq_factor = p.get_number("high_freq_factor", 4.0);
    if (!p.has("original_max_position_embeddings"))
      throw Error(origin + ": " + block + " of type 'llama3' needs 'original_max_position_embeddings'");
    rope.original_max_position_embeddings = p.get_positive("original_max_position_embeddings", 0);
    if (!(rope.high_freq_factor > rope.low_freq_factor))
      p.fail("high_freq_factor", "must be greater than low_freq_factor");
  } else if (type == "yarn") {
    rope.type = RopeType::Yarn;
    rope.factor = need_factor();
    rope.original_max_position_embeddings = p.get_positive("original_max_position_embeddings", max_pos);
    rope.beta_fast = p.get_number("beta_fast", 32.0);
    rope.beta_slow = p.get_number("beta_slow", 1.0);
    if (rope.beta_fast == 0.0) rope.beta_fast = 32.0;  // transformers: `get(...) or 32`
    if (rope.beta_slow == 0.0) rope.beta_slow = 1.0;
    rope.truncate = p.get_bool("truncate", true);
    auto mscale_of = [](double scale, double m) {
      return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
    };
    if (p.has("attention_factor")) {
      rope.attention_factor = p.get_number("attention_factor", 1.0);
    } else {
      double m = p.get_number("mscale", 0.0), m_all = p.get_number("mscale_all_dim", 0.0);
      rope.attention_factor = (m != 0.0 && m_all != 0.0)
                                  ? mscale_of(rope.factor, m) / mscale_of(rope.factor, m_all)
                                  : mscale_of(rope.factor, 1.0);
    }
  } else {
    throw Error(origin + ": field '" + where + "' has unsupported value '" + type +
                "' (supported: default, linear, llama3, yarn)");
  }
  return rope;
}

}  // namespace

std::string rope_type_name(RopeType t) {
  switch (t) {
    case RopeType::Default: return "default";
    case RopeType::Linear: return "linear";
    case RopeType::Llama3: return "llama3";
    case RopeType::Yarn: return "yarn";
  }
  return "?";
}

ModelConfig parse_model_config(const json& config, const std::string& origin) {
  if (!config.is_object()) throw Error(origin + ": expected a JSON object");
  ConfigReader r{config, origin};
  ModelConfig c;
  if (!r.has("model_type") || !config.at("model_type").is_string())
    throw Error(origin + ": field 'model_type' is missing (expected llama, mistral, qwen2 or qwen3)");
  c.model_type = config.at("model_type").get<std::string>();
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2" &&
      c.model_type != "qwen3")
    throw Error(origin + ": field 'model_type' has unsupported value '" + c.model_type +
                "' (supported: llama, mistral, qwen2, qwen3)");
  const ArchDefaults d = arch_defaults(c.model_type);
  const bool is_qwen = c.model_type == "qwen2" || c.model_type == "qwen3";

  if (r.has("hidden_act") && config.at("hidden_act") != "silu")
    r.fail("hidden_act", "has unsupported value " + config.at("hidden_act").dump() + " (supported: silu)");
  c.hidden_size = r.get_positive("hidden_size", 4096);
  c.n_layers = r.get_positive("num_hidden_layers", 32);
  c.n_heads = r.get_positive("num_attention_heads", 32);
  c.n_kv_heads = r.get_positive("num_key_value_heads", c.n_heads);
  c.intermediate_size = r.get_positive("intermediate_size", d.intermediate_size);
  c.vocab_size = r.get_positive("vocab_size", d.vocab_size);
  c.max_position_embeddings = r.get_positive("max_position_embeddings", d.max_position_embeddings);
  c.rms_norm_eps = r.get_number("rms_norm_eps", 1e-6);
  if (!(c.rms_norm_eps > 0.0)) r.fail("rms_norm_eps", "must be positive");
  if (c.n_heads % c.n_kv_heads != 0)
    r.fail("num_key_value_heads", "(" + std::to_string(c.n_kv_heads) +
                                      ") must divide num_attention_heads (" +
                                      std::to_string(c.n_heads) + ")");
  int64_t head_dim_default = d.head_dim != 0 ? d.head_dim : c.hidden_size / c.n_heads;
  if (d.head_dim == 0 && c.hidden_size % c.n_heads != 0 && !r.has("head_dim"))
    r.fail("hidden_size", "is not a multiple of num_attention_heads and no head_dim is given");
  c.head_dim = r.get_positive("head_dim", head_dim_default);
  if (c.head_dim % 2 != 0) r.fail("head_dim", "must be even for RoPE");
  if (r.has("partial_rotary_factor") && r.get_number("partial_rotary_factor", 1.0) != 1.0)
    r.fail("partial_rotary_factor", "is unsupported (only 1.0)");

  c.rope = parse_rope(config, origin, c.max_position_embeddings);

  const bool attention_bias = r.get_bool("attention_bias", false);
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;  // Qwen2 always has q/k/v biases and no o_proj bias
  } else if (c.model_type == "llama" || c.model_type == "qwen3") {
    c.qkv_bias = attention_bias;  // these two put attention_bias on q, k, v and o
    c.o_bias = attention_bias;
  }
  c.mlp_bias = c.model_type == "llama" && r.get_bool("mlp_bias", false);
  c.qk_norm = c.model_type == "qwen3";
  c.tie_word_embeddings = r.get_bool("tie_word_embeddings", false);

  // Sliding window, per layer.
  int64_t window = 0;
  if (c.model_type == "mistral") {
    window = r.has("sliding_window") ? r.get_positive("sliding_window", 0)
                                     : (config.contains("sliding_window") ? 0 : d.sliding_window);
  } else if (is_qwen && r.get_bool("use_sliding_window", false)) {
    window = r.get_positive("sliding_window", d.sliding_window);
  } else if (c.model_type == "llama" && r.has("sliding_window")) {
    r.fail("sliding_window", "is not supported for model_type llama");
  }
  c.layer_window.assign(static_cast<size_t>(c.n_layers), 0);
  if (r.has("layer_types")) {
    const json& types = config.at("layer_types");
    if (!types.is_array() || static_cast<int64_t>(types.size()) != c.n_layers)
      r.fail("layer_types", "must list one entry per layer (" + std::to_string(c.n_layers) + ")");
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const json& t = types.at(static_cast<size_t>(l));
      if (t == "full_attention") continue;
      if (t != "sliding_attention")
        r.fail("layer_types", "has unsupported value " + t.dump());
      if (window == 0) {
        window = r.get_positive("sliding_window", d.sliding_window);
      }
      c.layer_window[static_cast<size_t>(l)] = window;
    }
  } else if (is_qwen) {
    const int64_t first = r.get_int("max_window_layers", 28);
    for (int64_t l = 0; l < c.n_layers; ++l)
      if (l >= first) c.layer_window[static_cast<size_t>(l)] = window;
  } else {
    for (auto& w : c.layer_window) w = window;
  }

  if (config.contains("eos_token_id"))
    c.eos_token_ids = parse_token_ids(config.at("eos_token_id"), origin, "eos_token_id");
  if (r.has("bos_token_id")) c.bos_token_id = r.get_int("bos_token_id", -1);
  for (int64_t id : c.eos_token_ids)
    if (id < 0 || id >= c.vocab_size)
      r.fail("eos_token_id", "id " + std::to_string(id) + " is outside the vocabulary");
  return c;
}

namespace {
json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::parse_error& e) {
    throw Error(path.string() + ": invalid JSON: " + e.what());
  }
}
}  // namespace

ModelConfig load_model_config(const std::filesystem::path& path) {
  std::filesystem::path file = path;
  std::filesystem::path dir = path;
  if (std::filesystem::is_directory(path)) {
    file = path / "config.json";
  } else {
    dir = path.parent_path();
  }
  if (!std::filesystem::exists(file))
    throw Error(file.string() + ": not found (expected a Hugging Face checkpoint folder)");
  ModelConfig c = parse_model_config(read_json_file(file), file.string());
  const auto gen = dir / "generation_config.json";
  if (std::filesystem::is_directory(path) && std::filesystem::exists(gen))
    apply_generation_config(c, read_json_file(gen), gen.string());
  return c;
}

void apply_generation_config(ModelConfig& c, const json& g, const std::string& origin) {
  if (g.is_object() && g.contains("eos_token_id") && !g.at("eos_token_id").is_null()) {
    c.eos_token_ids = parse_token_ids(g.at("eos_token_id"), origin, "eos_token_id");
    for (int64_t id : c.eos_token_ids)
      if (id < 0 || id >= c.vocab_size)
        throw Error(origin + ": field 'eos_token_id' id " + std::to_string(id) + " is outside the vocabulary");
  }
  if (g.is_object() && g.contains("bos_token_id") && g.at("bos_token_id").is_number_integer())
    c.bos_token_id = g.at("bos_token_id").get<int64_t>();
}

}  // namespace headinfer
