#include "headinfer/random_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <thread>

#include "headinfer/checkpoint.h"
#include "headinfer/config.h"
#include "headinfer/error.h"

namespace headinfer {
namespace {

using nlohmann::json;

json llama_like(const char* type, int64_t hidden, int64_t layers, int64_t heads, int64_t kv_heads, int64_t ffn,
                int64_t vocab, double theta) {
  return json{{"model_type", type},
              {"hidden_size", hidden},
              {"num_hidden_layers", layers},
              {"num_attention_heads", heads},
              {"num_key_value_heads", kv_heads},
              {"intermediate_size", ffn},
              {"vocab_size", vocab},
              {"rms_norm_eps", 1e-5},
              {"rope_theta", theta},
              {"max_position_embeddings", 131072},
              {"tie_word_embeddings", false},
              {"hidden_act", "silu"},
              {"bos_token_id", 1},
              {"eos_token_id", 2}};
}

// Counter-based generator: the value of element i of tensor t depends only on (seed, t, i), so
// filling in parallel gives the same bytes for any number of threads.
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  float scale;   // values uniform in offset +- scale
  float offset;
};

std::vector<TensorSpec> tensor_specs(const ModelConfig& c) {
  std::vector<TensorSpec> specs;
  auto linear = [&](const std::string& name, int64_t out, int64_t in) {
    specs.push_back({name, {out, in}, 1.0f / std::sqrt(static_cast<float>(in)), 0.0f});
  };
  // Norm weights near the identity: 1 + w for llama-style, w around 0 for (1 + w) norms (gemma).
  const float norm_offset = c.norm_plus_one ? 0.0f : 1.0f;
  auto norm = [&](const std::string& name, int64_t n) { specs.push_back({name, {n}, 0.05f, norm_offset}); };
  auto bias = [&](const std::string& name, int64_t n) { specs.push_back({name, {n}, 0.02f, 0.0f}); };
  // Gemma multiplies the embedding by sqrt(hidden): scale it down so activations keep unit size.
  const float embed_scale = c.embedding_scale > 0.0f ? 1.0f / c.embedding_scale : 1.0f;
  specs.push_back({"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, embed_scale, 0.0f});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    norm(p + "input_layernorm.weight", c.hidden_size);
    if (c.fused_qkv) {
      linear(p + "self_attn.qkv_proj.weight", c.q_dim() + 2 * c.kv_dim(), c.hidden_size);
    } else {
      linear(p + "self_attn.q_proj.weight", c.q_dim(), c.hidden_size);
      linear(p + "self_attn.k_proj.weight", c.kv_dim(), c.hidden_size);
      linear(p + "self_attn.v_proj.weight", c.kv_dim(), c.hidden_size);
    }
    linear(p + "self_attn.o_proj.weight", c.hidden_size, c.q_dim());
    if (c.qkv_bias) {
      bias(p + "self_attn.q_proj.bias", c.q_dim());
      bias(p + "self_attn.k_proj.bias", c.kv_dim());
      bias(p + "self_attn.v_proj.bias", c.kv_dim());
    }
    if (c.o_bias) bias(p + "self_attn.o_proj.bias", c.hidden_size);
    if (c.qk_norm) {
      norm(p + "self_attn.q_norm.weight", c.head_dim);
      norm(p + "self_attn.k_norm.weight", c.head_dim);
    }
    norm(p + "post_attention_layernorm.weight", c.hidden_size);
    if (c.sandwich_norms) {
      norm(p + "pre_feedforward_layernorm.weight", c.hidden_size);
      norm(p + "post_feedforward_layernorm.weight", c.hidden_size);
    }
    if (c.fused_qkv) {
      linear(p + "mlp.gate_up_proj.weight", 2 * c.intermediate_size, c.hidden_size);
    } else {
      linear(p + "mlp.gate_proj.weight", c.intermediate_size, c.hidden_size);
      linear(p + "mlp.up_proj.weight", c.intermediate_size, c.hidden_size);
    }
    linear(p + "mlp.down_proj.weight", c.hidden_size, c.intermediate_size);
    if (c.mlp_bias) {
      bias(p + "mlp.gate_proj.bias", c.intermediate_size);
      bias(p + "mlp.up_proj.bias", c.intermediate_size);
      bias(p + "mlp.down_proj.bias", c.hidden_size);
    }
  }
  norm("model.norm.weight", c.hidden_size);
  if (!c.tie_word_embeddings) linear("lm_head.weight", c.vocab_size, c.hidden_size);
  return specs;
}

void fill(uint8_t* dst, DType dtype, int64_t begin, int64_t end, uint64_t stream, const TensorSpec& spec) {
  for (int64_t i = begin; i < end; ++i) {
    const uint64_t r = splitmix64(stream ^ splitmix64(static_cast<uint64_t>(i)));
    const float u = static_cast<float>(r >> 40) * (1.0f / 16777216.0f);  // [0, 1), 24 bits
    const float v = spec.offset + spec.scale * (2.0f * u - 1.0f);
    if (dtype == DType::F32) {
      std::memcpy(dst + i * 4, &v, 4);
    } else {
      const uint16_t h = dtype == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
      std::memcpy(dst + i * 2, &h, 2);
    }
  }
}

}  // namespace

std::vector<std::string> builtin_shape_names() {
  return {"tiny", "llama3-8b", "llama3.2-1b", "qwen2.5-7b", "mistral-7b", "gemma2-9b", "phi3.5-mini"};
}

json builtin_shape_config(const std::string& shape) {
  if (shape == "tiny") {
    json c = llama_like("llama", 64, 2, 4, 2, 176, 320, 10000.0);
    c["max_position_embeddings"] = 4096;
    return c;
  }
  if (shape == "llama3-8b") {
    json c = llama_like("llama", 4096, 32, 32, 8, 14336, 128256, 500000.0);
    c["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
    c["bos_token_id"] = 128000;
    c["eos_token_id"] = 128001;
    return c;
  }
  if (shape == "llama3.2-1b") {
    json c = llama_like("llama", 2048, 16, 32, 8, 8192, 128256, 500000.0);
    c["head_dim"] = 64;
    c["tie_word_embeddings"] = true;
    c["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 32.0}, {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
    c["bos_token_id"] = 128000;
    c["eos_token_id"] = 128001;
    return c;
  }
  if (shape == "qwen2.5-7b") {
    json c = llama_like("qwen2", 3584, 28, 28, 4, 18944, 152064, 1000000.0);
    c["rms_norm_eps"] = 1e-6;
    c["bos_token_id"] = 151643;
    c["eos_token_id"] = 151645;
    return c;
  }
  if (shape == "mistral-7b") {
    json c = llama_like("mistral", 4096, 32, 32, 8, 14336, 32000, 10000.0);
    c["sliding_window"] = nullptr;
    return c;
  }
  // Gemma 2 9B's shape (hidden 3584, 42 layers, 16 heads / 8 kv of 256 dims, ffn 14336, vocab 256000,
  // sliding window 4096 on every other layer, softcaps 50 / 30, max context 8192).
  if (shape == "gemma2-9b") {
    json c = llama_like("gemma2", 3584, 42, 16, 8, 14336, 256000, 10000.0);
    c.erase("hidden_act");
    c["hidden_activation"] = "gelu_pytorch_tanh";
    c["head_dim"] = 256;
    c["query_pre_attn_scalar"] = 256;
    c["sliding_window"] = 4096;
    c["attn_logit_softcapping"] = 50.0;
    c["final_logit_softcapping"] = 30.0;
    c["max_position_embeddings"] = 8192;
    c["rms_norm_eps"] = 1e-6;
    c["tie_word_embeddings"] = true;
    c["bos_token_id"] = 2;
    c["eos_token_id"] = 1;
    return c;
  }
  // Phi-3.5-mini's shape (hidden 3072, 32 layers, 32 heads = kv heads of 96 dims, ffn 8192, vocab
  // 32064, longrope from 4096 to 131072). Its 48 short/long factors are set to 1 here: the shape
  // is for timing and placement, not for the model's numbers.
  if (shape == "phi3.5-mini") {
    json c = llama_like("phi3", 3072, 32, 32, 32, 8192, 32064, 10000.0);
    c["original_max_position_embeddings"] = 4096;
    c["rope_scaling"] = {{"type", "longrope"},
                         {"short_factor", std::vector<double>(48, 1.0)},
                         {"long_factor", std::vector<double>(48, 1.0)}};
    c["bos_token_id"] = 1;
    c["eos_token_id"] = 32000;
    return c;
  }
  std::string names;
  for (const std::string& n : builtin_shape_names()) names += (names.empty() ? "" : ", ") + n;
  throw Error("unknown shape '" + shape + "' (built-in shapes: " + names + ")");
}

std::unique_ptr<Checkpoint> Checkpoint::random(const json& config_json, DType dtype, uint64_t seed) {
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  ckpt->config_ = parse_model_config(config_json, "random-weight config");
  const std::vector<TensorSpec> specs = tensor_specs(ckpt->config_);
  const unsigned n_threads = std::max(1u, std::thread::hardware_concurrency());
  for (size_t t = 0; t < specs.size(); ++t) {
    const TensorSpec& spec = specs[t];
    auto view = std::make_unique<TensorView>();
    view->name = spec.name;
    view->dtype = dtype;
    view->shape = spec.shape;
    view->file = "(random weights)";
    const int64_t numel = view->numel();
    view->nbytes = static_cast<size_t>(numel) * dtype_size(dtype);
    std::unique_ptr<uint8_t[]> bytes(new uint8_t[view->nbytes]);
    const uint64_t stream = splitmix64(seed * 0x100000001b3ull + t);
    std::vector<std::thread> workers;
    const int64_t parts = numel < (1 << 20) ? 1 : static_cast<int64_t>(n_threads);
    for (int64_t p = 0; p < parts; ++p)
      workers.emplace_back(fill, bytes.get(), dtype, numel * p / parts, numel * (p + 1) / parts, stream, spec);
    for (auto& w : workers) w.join();
    view->data = bytes.get();
    ckpt->by_name_[spec.name] = view.get();
    ckpt->owned_views_.push_back(std::move(view));
    ckpt->owned_bytes_.push_back(std::move(bytes));
  }
  return ckpt;
}

void write_random_checkpoint(const std::filesystem::path& dir, const json& config_json, DType dtype, uint64_t seed) {
  const auto ckpt = Checkpoint::random(config_json, dtype, seed);
  std::filesystem::create_directories(dir);
  std::vector<TensorToWrite> tensors;
  for (const TensorView* t : ckpt->tensors()) {
    const auto* b = static_cast<const uint8_t*>(t->data);
    tensors.push_back({t->name, t->dtype, t->shape, std::vector<uint8_t>(b, b + t->nbytes)});
  }
  write_safetensors(dir / "model.safetensors", tensors);
  json out = config_json;
  out["torch_dtype"] = dtype == DType::F32 ? "float32" : dtype == DType::BF16 ? "bfloat16" : "float16";
  std::ofstream f(dir / "config.json");
  f << out.dump(2) << "\n";
  if (!f) throw Error((dir / "config.json").string() + ": write failed");
}

}  // namespace headinfer
