// config.json parsing: every real config in shared/testdata/configs, both key styles, the
// transformers defaults, and one clear error per unsupported field.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "headinfer/config.h"
#include "headinfer/error.h"
#include "headinfer/model.h"
#include "testdata.h"

namespace headinfer {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

ModelConfig load(const std::string& name) { return load_model_config(test::testdata_dir() / "configs" / name); }

TEST(Config, EveryRealConfigLoads) {
  HEADINFER_REQUIRE_TESTDATA();
  int n = 0;
  for (const auto& e : fs::directory_iterator(test::testdata_dir() / "configs")) {
    if (!e.is_directory()) continue;
    const ModelConfig c = load_model_config(e.path());
    EXPECT_GT(c.n_layers, 0) << e.path();
    EXPECT_EQ(c.n_heads % c.n_kv_heads, 0) << e.path();
    EXPECT_EQ(static_cast<int64_t>(c.layer_window.size()), c.n_layers);
    ++n;
  }
  EXPECT_GE(n, 13);
}

TEST(Config, Llama31_8B) {
  HEADINFER_REQUIRE_TESTDATA();
  const ModelConfig c = load("Meta-Llama-3.1-8B");
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.n_layers, 32);
  EXPECT_EQ(c.n_heads, 32);
  EXPECT_EQ(c.n_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.rope.type, RopeType::Llama3);
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.kv_bytes_per_token(2), 128 * 1024);  // 128 KiB of bf16 KV per token
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001}));  // generation_config.json wins
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.layer_window[0], 0);
}

TEST(Config, Llama31_8B_InstructHasAListOfEosIds) {
  HEADINFER_REQUIRE_TESTDATA();
  const ModelConfig c = load("Meta-Llama-3.1-8B-Instruct");
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
}

TEST(Config, Llama2HasNoRopeThetaSoTheDefaultApplies) {
  HEADINFER_REQUIRE_TESTDATA();
  const ModelConfig c = load("Llama-2-7b-hf");
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.rope.type, RopeType::Default);
  EXPECT_EQ(c.n_kv_heads, 32);
  EXPECT_EQ(c.head_dim, 128);
}

TEST(Config, MistralSlidingWindowOnEveryLayer) {
  HEADINFER_REQUIRE_TESTDATA();
  const ModelConfig c = load("Mistral-7B-v0.1");
  for (int64_t w : c.layer_window) EXPECT_EQ(w, 4096);
  EXPECT_FALSE(c.qkv_bias);
}

TEST(Config, Qwen2BiasesAndWindowOnlyWhenEnabled) {
  HEADINFER_REQUIRE_TESTDATA();
  const ModelConfig c = load("Qwen2.5-7B-Instruct");
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  for (int64_t w : c.layer_window) EXPECT_EQ(w, 0);  // use_sliding_window: false
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 128);
  const ModelConfig tied = load("Qwen2.5-0.5B");
  EXPECT_TRUE(tied.tie_word_embeddings);
}

TEST(Config, Qwen3ExplicitHeadDimAndQkNorm) {
  HEADINFER_REQUIRE_TESTDATA();
  const ModelConfig c = load("Qwen3-0.6B");
  EXPECT_TRUE(c.qk_norm);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_NE(c.head_dim * c.n_heads, c.hidden_size);
}

TEST(Config, TransformersV5RopeParameters) {
  HEADINFER_REQUIRE_TESTDATA();
  const ModelConfig yarn = load_model_config(test::testdata_dir() / "models/tiny/qwen2_yarn-f32");
  EXPECT_EQ(yarn.rope.type, RopeType::Yarn);
  EXPECT_DOUBLE_EQ(yarn.rope.factor, 4.0);
  EXPECT_EQ(yarn.rope.original_max_position_embeddings, 256);
  EXPECT_NEAR(yarn.rope.attention_factor, 0.1 * std::log(4.0) + 1.0, 1e-12);
  const ModelConfig swa = load_model_config(test::testdata_dir() / "models/tiny/mistral_swa-f32");
  EXPECT_EQ(swa.layer_window[0], 48);
}

json minimal_llama() {
  return json{{"model_type", "llama"},      {"hidden_size", 64},   {"num_hidden_layers", 2},
              {"num_attention_heads", 4},   {"intermediate_size", 128}, {"vocab_size", 100}};
}

void expect_error(const json& config, const std::string& what) {
  try {
    parse_model_config(config, "config.json");
    FAIL() << "expected error containing " << what;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

TEST(Config, DefaultsOfAMinimalConfig) {
  const ModelConfig c = parse_model_config(minimal_llama(), "config.json");
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.max_position_embeddings, 2048);
}

TEST(Config, RopeScalingOldStyleWithTypeKey) {
  json j = minimal_llama();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  const ModelConfig c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.rope.type, RopeType::Linear);
  EXPECT_DOUBLE_EQ(c.rope.factor, 2.0);
}

TEST(Config, ClearErrors) {
  json j = minimal_llama();
  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  expect_error(j, "field 'rope_scaling.rope_type' has unsupported value 'dynamic'");
  j = minimal_llama();
  j["model_type"] = "gemma";
  expect_error(j, "field 'model_type' has unsupported value 'gemma'");
  j = minimal_llama();
  j["num_key_value_heads"] = 3;
  expect_error(j, "field 'num_key_value_heads' (3) must divide num_attention_heads (4)");
  j = minimal_llama();
  j["hidden_act"] = "gelu";
  expect_error(j, "field 'hidden_act' has unsupported value");
  j = minimal_llama();
  j["hidden_size"] = "big";
  expect_error(j, "field 'hidden_size' must be an integer");
  j = minimal_llama();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  expect_error(j, "needs 'original_max_position_embeddings'");
  j = minimal_llama();
  j["eos_token_id"] = 1000;
  expect_error(j, "outside the vocabulary");
  expect_error(json::array(), "expected a JSON object");
}

// The scaled frequencies keep their defining properties (transformers' formulas).
TEST(Rope, ScalingFormulas) {
  RopeConfig r;
  r.theta = 500000.0;
  const auto base = rope_inv_freq(r, 128);
  EXPECT_FLOAT_EQ(base[0], 1.0f);
  r.type = RopeType::Linear;
  r.factor = 4.0;
  const auto lin = rope_inv_freq(r, 128);
  for (size_t i = 0; i < base.size(); ++i) EXPECT_FLOAT_EQ(lin[i], base[i] / 4.0f);
  r.type = RopeType::Llama3;
  r.factor = 8.0;
  r.original_max_position_embeddings = 8192;
  const auto l3 = rope_inv_freq(r, 128);
  EXPECT_FLOAT_EQ(l3[0], base[0]);  // high frequencies untouched
  EXPECT_FLOAT_EQ(l3.back(), base.back() / 8.0f);  // low frequencies divided by the factor
}

}  // namespace
}  // namespace headinfer
