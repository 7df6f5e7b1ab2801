// config.json parsing for gemma2, gemma3_text, phi3 and explicit head_dim: the repo's tiny
// checkpoints (5.x keys), transformers' defaults for absent keys, the 4.x key style of the
// published Gemma 3 and Phi-3.5 files, and one clear error per unsupported value.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "headinfer/config.h"
#include "headinfer/error.h"

namespace headinfer {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

ModelConfig family(const std::string& name) {
  return load_model_config(fs::path(HEADINFER_SOURCE_DIR) / "tests/data/families" / name);
}

std::string error_of(const json& j) {
  try {
    parse_model_config(j, "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(FamilyConfig, TinyCheckpoints) {
  const ModelConfig g2 = family("gemma2-f32");
  EXPECT_EQ(g2.activation, Activation::GeluTanh);
  EXPECT_TRUE(g2.norm_plus_one && g2.sandwich_norms && g2.tie_word_embeddings);
  EXPECT_EQ(g2.embedding_scale, static_cast<float>(std::sqrt(64.0)));
  EXPECT_EQ(g2.attn_softcap, 4.0f);
  EXPECT_EQ(g2.final_softcap, 6.0f);
  EXPECT_EQ(g2.head_dim, 32);
  EXPECT_EQ(g2.attention_scale(), static_cast<float>(std::pow(24.0, -0.5)));
  EXPECT_EQ(g2.layer_window, (std::vector<int64_t>{48, 0, 48}));

  const ModelConfig g3 = family("gemma3-f32");
  EXPECT_TRUE(g3.qk_norm && g3.has_local_rope);
  EXPECT_EQ(g3.attn_softcap, 0.0f);
  EXPECT_EQ(g3.final_softcap, 0.0f);
  EXPECT_EQ(g3.layer_window, (std::vector<int64_t>{48, 48, 48, 48, 48, 0, 48}));
  EXPECT_EQ(g3.rope.type, RopeType::Linear);
  EXPECT_DOUBLE_EQ(g3.rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(g3.rope.theta, 1e6);
  EXPECT_EQ(g3.rope_local.type, RopeType::Default);
  EXPECT_DOUBLE_EQ(g3.rope_local.theta, 1e4);

  const ModelConfig phi = family("phi3-f32");
  EXPECT_TRUE(phi.fused_qkv);
  EXPECT_EQ(phi.rotary_dim, 8);
  EXPECT_EQ(phi.rope.type, RopeType::Longrope);
  EXPECT_EQ(phi.rope.original_max_position_embeddings, 64);
  EXPECT_EQ(phi.rope.short_factor.size(), 4u);
  EXPECT_DOUBLE_EQ(phi.rope.factor, 4096.0 / 64.0);
  EXPECT_DOUBLE_EQ(phi.rope.attention_factor, std::sqrt(1.0 + std::log(64.0) / std::log(64.0)));
  for (int64_t w : phi.layer_window) EXPECT_EQ(w, 0);

  const ModelConfig nemo = family("nemo-f32");
  EXPECT_EQ(nemo.head_dim, 32);  // hidden 64 / 4 heads would be 16
  EXPECT_EQ(nemo.q_dim(), 128);
}

// Gemma 2's config class defaults: softcaps 50 / 30, alternating windows of 4096 (sliding first),
// query_pre_attn_scalar 256, head_dim 256, tied embeddings.
TEST(FamilyConfig, Gemma2Defaults) {
  const ModelConfig c = parse_model_config(
      json{{"model_type", "gemma2"}, {"hidden_size", 3584}, {"num_hidden_layers", 4}, {"num_attention_heads", 16},
           {"num_key_value_heads", 8}},
      "config.json");
  EXPECT_EQ(c.attn_softcap, 50.0f);
  EXPECT_EQ(c.final_softcap, 30.0f);
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_EQ(c.attention_scale(), static_cast<float>(std::pow(256.0, -0.5)));
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.layer_window, (std::vector<int64_t>{4096, 0, 4096, 0}));
  // null softcaps mean none
  const ModelConfig n = parse_model_config(json{{"model_type", "gemma2"}, {"num_hidden_layers", 2},
                                                {"attn_logit_softcapping", nullptr}, {"final_logit_softcapping", nullptr}},
                                           "config.json");
  EXPECT_EQ(n.attn_softcap, 0.0f);
  EXPECT_EQ(n.final_softcap, 0.0f);
}

// The 4.x keys of the published gemma-3 text configs: rope_theta + rope_scaling for the global
// layers, rope_local_base_freq for the local ones, sliding_window_pattern instead of layer_types.
TEST(FamilyConfig, Gemma3OldStyleKeys) {
  const ModelConfig c = parse_model_config(
      json{{"model_type", "gemma3_text"}, {"num_hidden_layers", 12}, {"rope_theta", 1000000},
           {"rope_local_base_freq", 10000}, {"rope_scaling", {{"factor", 8.0}, {"rope_type", "linear"}}},
           {"sliding_window", 1024}, {"sliding_window_pattern", 6}},
      "config.json");
  EXPECT_EQ(c.rope.type, RopeType::Linear);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.rope_local.type, RopeType::Default);
  EXPECT_DOUBLE_EQ(c.rope_local.theta, 1e4);
  for (int64_t l = 0; l < 12; ++l) EXPECT_EQ(c.layer_window[l], (l + 1) % 6 == 0 ? 0 : 1024) << l;
}

// Phi-3.5's 4.x style: rope_scaling {type: longrope, short_factor, long_factor}, the original
// context at the top level, no partial rotary.
TEST(FamilyConfig, Phi3LongropeOldStyle) {
  const ModelConfig c = parse_model_config(
      json{{"model_type", "phi3"}, {"hidden_size", 3072}, {"num_hidden_layers", 2}, {"num_attention_heads", 32},
           {"max_position_embeddings", 131072}, {"original_max_position_embeddings", 4096}, {"sliding_window", 262144},
           {"rope_scaling", {{"type", "longrope"}, {"short_factor", std::vector<double>(48, 1.0)},
                             {"long_factor", std::vector<double>(48, 2.0)}}}},
      "config.json");
  EXPECT_EQ(c.rotary_dim, 96);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 4096);
  EXPECT_NEAR(c.rope.attention_factor, std::sqrt(1.0 + std::log(32.0) / std::log(4096.0)), 1e-15);
  EXPECT_EQ(c.layer_window[0], 262144);
}

TEST(FamilyConfig, ClearErrors) {
  EXPECT_NE(error_of(json{{"model_type", "gemma2"}, {"hidden_activation", "silu"}}).find("hidden_activation"),
            std::string::npos);
  EXPECT_NE(error_of(json{{"model_type", "gemma2"}, {"use_bidirectional_attention", true}})
                .find("use_bidirectional_attention"),
            std::string::npos);
  const std::string short_list = error_of(
      json{{"model_type", "phi3"}, {"hidden_size", 64}, {"num_attention_heads", 4},
           {"rope_scaling", {{"type", "longrope"}, {"short_factor", {1.0}}, {"long_factor", {1.0}}}}});
  EXPECT_NE(short_list.find("short_factor"), std::string::npos) << short_list;
  EXPECT_NE(error_of(json{{"model_type", "phi3"}, {"rope_scaling", {{"type", "longrope"}}}}).find("short_factor"),
            std::string::npos);
  EXPECT_NE(error_of(json{{"model_type", "llama"}, {"partial_rotary_factor", 0.5}}).find("partial_rotary_factor"),
            std::string::npos);
  EXPECT_NE(error_of(json{{"model_type", "gemma"}}).find("gemma3_text"), std::string::npos);  // lists what works
}

}  // namespace
}  // namespace headinfer
