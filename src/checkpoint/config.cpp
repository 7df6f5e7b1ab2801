#include "headinfer/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "headinfer/error.h"

namespace headinfer {
namespace {

using nlohmann::json;

constexpr int64_t kMaxCount = (int64_t{1} << 31) - 1;  // token counts and ids are int32 on the device
constexpr int64_t kMaxHeads = int64_t{1} << 16;        // layers, heads and head_dim
constexpr int64_t kMaxWidth = int64_t{1} << 24;        // hidden and intermediate sizes

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

  // Positive and at most `max`: the caps refuse sizes no model has before anything is sized from
  // them (a num_hidden_layers of 2^62 would otherwise end in a failed allocation, not an error
  // naming the field), and keep the engine's products (kv bytes per token) inside int64.
  int64_t get_positive(const char* key, int64_t fallback, int64_t max = kMaxCount) const {
    int64_t v = get_int(key, fallback);
    if (v <= 0) fail(key, "must be positive, got " + std::to_string(v));
    if (v > max) fail(key, "is " + std::to_string(v) + ", more than the " + std::to_string(max) + " this engine accepts");
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
  if (model_type == "gemma2") return {256000, 9216, 8192, 256, 4096};
  if (model_type == "gemma3_text") return {262208, 9216, 131072, 256, 4096};
  if (model_type == "phi3") return {32064, 8192, 4096, 0, 0};
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

// Where a rope block comes from and what it defaults to.
struct RopeSource {
  json params;               // the block (may be empty)
  std::string block;         // its name in error messages
  double default_theta;      // when neither the block nor the top level has rope_theta
  bool theta_from_top = true;
  int64_t rotary_dim = 0;    // longrope factor lists have rotary_dim / 2 entries
  int64_t top_original_max = 0;  // phi3: a top-level original_max_position_embeddings wins
  bool longrope_aliases = false;  // phi3: types 'su' and 'yarn' mean longrope
};

// The rope block of the 4.x and 5.x styles: `rope_parameters`, or `rope_theta` + `rope_scaling`.
RopeSource rope_source(const json& config, const std::string& origin) {
  RopeSource src{json::object(), "rope_parameters", 10000.0};
  if (config.contains("rope_parameters") && !config.at("rope_parameters").is_null()) {
    src.params = config.at("rope_parameters");
  } else if (config.contains("rope_scaling") && !config.at("rope_scaling").is_null()) {
    src.params = config.at("rope_scaling");
    src.block = "rope_scaling";
  }
  if (!src.params.is_object()) throw Error(origin + ": field '" + src.block + "' must be an object");
  return src;
}

RopeConfig parse_rope(const json& config, const std::string& origin, int64_t max_pos, const RopeSource& src) {
  RopeConfig rope;
  const json& params = src.params;
  const std::string& block = src.block;
  ConfigReader top{config, origin};
  ConfigReader p{params, origin};
  const double top_theta = src.theta_from_top ? top.get_number("rope_theta", src.default_theta) : src.default_theta;
  rope.theta = p.get_number("rope_theta", top_theta);
  if (!(rope.theta > 1.0)) p.fail("rope_theta", "must be greater than 1");

  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (p.has(key)) {
      if (!params.at(key).is_string()) p.fail(key, "must be a string");
      type = params.at(key).get<std::string>();
      break;
    }
  }
  if (src.longrope_aliases && (type == "su" || type == "yarn")) type = "longrope";
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
  } else if (type == "longrope") {
    rope.type = RopeType::Longrope;
    rope.original_max_position_embeddings =
        src.top_original_max > 0 ? src.top_original_max : p.get_positive("original_max_position_embeddings", max_pos);
    for (auto [key, dst] : {std::pair{"short_factor", &rope.short_factor}, std::pair{"long_factor", &rope.long_factor}}) {
      if (!p.has(key) || !params.at(key).is_array())
        throw Error(origin + ": " + block + " of type 'longrope' needs '" + key + "' (a list of numbers)");
      for (const json& v : params.at(key)) {
        if (!v.is_number() || !(v.get<double>() > 0.0)) p.fail(key, "must hold positive numbers");
        dst->push_back(v.get<double>());
      }
      if (static_cast<int64_t>(dst->size()) != src.rotary_dim / 2)
        p.fail(key, "has " + std::to_string(dst->size()) + " entries, expected rotary dims / 2 = " +
                        std::to_string(src.rotary_dim / 2));
    }
    // transformers: factor = max_position_embeddings / original unless given; attention factor
    // sqrt(1 + ln(factor) / ln(original)) unless given, 1 when factor <= 1.
    rope.factor = p.has("factor") ? p.get_number("factor", 1.0)
                                  : static_cast<double>(max_pos) / static_cast<double>(rope.original_max_position_embeddings);
    if (p.has("attention_factor")) {
      rope.attention_factor = p.get_number("attention_factor", 1.0);
    } else {
      rope.attention_factor = rope.factor <= 1.0 ? 1.0
                                                 : std::sqrt(1.0 + std::log(rope.factor) /
                                                                       std::log(static_cast<double>(
                                                                           rope.original_max_position_embeddings)));
    }
  } else {
    throw Error(origin + ": field '" + where + "' has unsupported value '" + type +
                "' (supported: default, linear, llama3, yarn, longrope)");
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
    case RopeType::Longrope: return "longrope";
  }
  return "?";
}

ModelConfig parse_model_config(const json& config, const std::string& origin) {
  static const char* const kSupported = "llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3";
  if (!config.is_object()) throw Error(origin + ": expected a JSON object");
  ConfigReader r{config, origin};
  ModelConfig c;
  if (!r.has("model_type") || !config.at("model_type").is_string())
    throw Error(origin + ": field 'model_type' is missing (expected one of " + kSupported + ")");
  c.model_type = config.at("model_type").get<std::string>();
  const bool is_qwen = c.model_type == "qwen2" || c.model_type == "qwen3";
  const bool is_gemma = c.model_type == "gemma2" || c.model_type == "gemma3_text";
  const bool is_phi3 = c.model_type == "phi3";
  if (c.model_type != "llama" && c.model_type != "mistral" && !is_qwen && !is_gemma && !is_phi3)
    throw Error(origin + ": field 'model_type' has unsupported value '" + c.model_type + "' (supported: " +
                kSupported + ")");
  const ArchDefaults d = arch_defaults(c.model_type);

  // Gemma names its activation hidden_activation (older files also carry hidden_act).
  const char* act_key = is_gemma && r.has("hidden_activation") ? "hidden_activation" : "hidden_act";
  const std::string act = r.has(act_key) && config.at(act_key).is_string() ? config.at(act_key).get<std::string>()
                                                                           : (is_gemma ? "gelu_pytorch_tanh" : "silu");
  if (r.has(act_key) && !config.at(act_key).is_string()) r.fail(act_key, "must be a string");
  if (act == "silu" && !is_gemma) {
    c.activation = Activation::Silu;
  } else if (act == "gelu_pytorch_tanh" && is_gemma) {
    c.activation = Activation::GeluTanh;
  } else {
    r.fail(act_key, "has unsupported value '" + act + "' for " + c.model_type + " (supported: " +
                        (is_gemma ? "gelu_pytorch_tanh" : "silu") + ")");
  }
  c.hidden_size = r.get_positive("hidden_size", 4096, kMaxWidth);
  c.n_layers = r.get_positive("num_hidden_layers", 32, kMaxHeads);
  c.n_heads = r.get_positive("num_attention_heads", 32, kMaxHeads);
  c.n_kv_heads = r.get_positive("num_key_value_heads", c.n_heads, kMaxHeads);
  c.intermediate_size = r.get_positive("intermediate_size", d.intermediate_size, kMaxWidth);
  c.vocab_size = r.get_positive("vocab_size", d.vocab_size);
  c.max_position_embeddings = r.get_positive("max_position_embeddings", d.max_position_embeddings);
  c.rms_norm_eps = r.get_number("rms_norm_eps", is_phi3 ? 1e-5 : 1e-6);
  if (!(c.rms_norm_eps > 0.0)) r.fail("rms_norm_eps", "must be positive");
  if (c.n_heads % c.n_kv_heads != 0)
    r.fail("num_key_value_heads", "(" + std::to_string(c.n_kv_heads) +
                                      ") must divide num_attention_heads (" +
                                      std::to_string(c.n_heads) + ")");
  int64_t head_dim_default = d.head_dim != 0 ? d.head_dim : c.hidden_size / c.n_heads;
  if (d.head_dim == 0 && c.hidden_size % c.n_heads != 0 && !r.has("head_dim"))
    r.fail("hidden_size", "is not a multiple of num_attention_heads and no head_dim is given");
  c.head_dim = r.get_positive("head_dim", head_dim_default, kMaxHeads);
  if (c.head_dim % 2 != 0) r.fail("head_dim", "must be even for RoPE");

  // Partial rotary (phi3): the factor at the top level or in the rope block.
  RopeSource rope_src = rope_source(config, origin);
  double partial = r.get_number("partial_rotary_factor", 1.0);
  if (rope_src.params.contains("partial_rotary_factor"))
    partial = ConfigReader{rope_src.params, origin}.get_number("partial_rotary_factor", partial);
  if (partial != 1.0 && !is_phi3) r.fail("partial_rotary_factor", "is only supported for phi3 (got " +
                                             std::to_string(partial) + ")");
  if (!(partial > 0.0 && partial <= 1.0)) r.fail("partial_rotary_factor", "must be in (0, 1]");
  c.rotary_dim = static_cast<int64_t>(static_cast<double>(c.head_dim) * partial);  // transformers: int(head_dim * f)
  if (c.rotary_dim < 2 || c.rotary_dim % 2 != 0)
    r.fail("partial_rotary_factor", "gives " + std::to_string(c.rotary_dim) + " rotary dims (must be even, >= 2)");
  rope_src.rotary_dim = c.rotary_dim;

  if (c.model_type == "gemma3_text") {
    // transformers: per layer type; the global one takes rope_scaling and rope_theta (default 1e6),
    // the local one rope_local_base_freq (default 1e4).
    const json& rp = rope_src.params;
    const bool nested = rp.contains("full_attention") || rp.contains("sliding_attention");
    RopeSource global = rope_src, local{json::object(), "rope_parameters.sliding_attention", 10000.0, false};
    global.default_theta = 1000000.0;
    if (nested) {
      global.params = rp.contains("full_attention") && !rp.at("full_attention").is_null() ? rp.at("full_attention")
                                                                                          : json::object();
      global.block = "rope_parameters.full_attention";
      global.theta_from_top = false;
      if (rp.contains("sliding_attention") && !rp.at("sliding_attention").is_null()) local.params = rp.at("sliding_attention");
    }
    local.default_theta = r.get_number("rope_local_base_freq", 10000.0);
    local.rotary_dim = c.rotary_dim;
    if (!global.params.is_object() || !local.params.is_object())
      throw Error(origin + ": field 'rope_parameters' must hold objects per layer type");
    c.rope = parse_rope(config, origin, c.max_position_embeddings, global);
    c.rope_local = parse_rope(config, origin, c.max_position_embeddings, local);
    c.has_local_rope = true;
  } else {
    if (is_phi3) {
      rope_src.longrope_aliases = true;
      rope_src.top_original_max = r.get_int("original_max_position_embeddings", 0);
    }
    c.rope = parse_rope(config, origin, c.max_position_embeddings, rope_src);
  }
  if (c.rope.type == RopeType::Longrope && !is_phi3)
    throw Error(origin + ": rope type 'longrope' is only supported for phi3");

  const bool attention_bias = r.get_bool("attention_bias", false);
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;  // Qwen2 always has q/k/v biases and no o_proj bias
  } else if (c.model_type == "llama" || c.model_type == "qwen3" || is_gemma) {
    c.qkv_bias = attention_bias;  // these put attention_bias on q, k, v and o
    c.o_bias = attention_bias;
  }
  c.mlp_bias = c.model_type == "llama" && r.get_bool("mlp_bias", false);
  c.qk_norm = c.model_type == "qwen3" || c.model_type == "gemma3_text";
  c.tie_word_embeddings = r.get_bool("tie_word_embeddings", is_gemma);
  c.fused_qkv = is_phi3;
  if (is_gemma) {
    c.norm_plus_one = true;
    c.sandwich_norms = true;
    // transformers: torch.tensor(hidden_size ** 0.5), an fp32 scalar.
    c.embedding_scale = static_cast<float>(std::sqrt(static_cast<double>(c.hidden_size)));
    c.query_pre_attn_scalar = r.get_number("query_pre_attn_scalar", 256.0);
    if (!(c.query_pre_attn_scalar > 0.0)) r.fail("query_pre_attn_scalar", "must be positive");
    if (r.get_bool("use_bidirectional_attention", false))
      r.fail("use_bidirectional_attention", "is not supported (causal attention only)");
    const bool g2 = c.model_type == "gemma2";
    // Absent: the config class's default (gemma2: 50 and 30, gemma3: none); null: none. Gemma 3's
    // attention in transformers 5.17 never applies attn_logit_softcapping, so neither do we.
    auto softcap = [&](const char* key, double absent) {
      return static_cast<float>(r.get_number(key, config.contains(key) ? 0.0 : absent));
    };
    if (g2) c.attn_softcap = softcap("attn_logit_softcapping", 50.0);
    c.final_softcap = softcap("final_logit_softcapping", g2 ? 30.0 : 0.0);
    if (c.attn_softcap < 0.0f) r.fail("attn_logit_softcapping", "must be positive");
    if (c.final_softcap < 0.0f) r.fail("final_logit_softcapping", "must be positive");
  }

  // Sliding window, per layer.
  int64_t window = 0;
  if (c.model_type == "mistral") {
    window = r.has("sliding_window") ? r.get_positive("sliding_window", 0)
                                     : (config.contains("sliding_window") ? 0 : d.sliding_window);
  } else if (is_qwen && r.get_bool("use_sliding_window", false)) {
    window = r.get_positive("sliding_window", d.sliding_window);
  } else if (is_phi3 && r.has("sliding_window")) {
    window = r.get_positive("sliding_window", 0);  // every layer (transformers' phi3 mask)
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
  } else if (is_gemma) {
    // transformers' defaults: gemma2 alternates (sliding first), gemma3 every sliding_window_pattern-th
    // layer is global.
    window = r.get_positive("sliding_window", d.sliding_window);
    const int64_t pattern = c.model_type == "gemma2" ? 2 : r.get_positive("sliding_window_pattern", 6);
    for (int64_t l = 0; l < c.n_layers; ++l)
      if ((l + 1) % pattern != 0) c.layer_window[static_cast<size_t>(l)] = window;
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
  } catch (const json::exception& e) {  // parse_error, out_of_range (1E400)
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
