// End-to-end on the other families (gemma2, gemma3_text, phi3, an explicit-head_dim mistral):
// greedy ids and per-step logits against transformers 5.17 on the repo's tiny checkpoints
// (tests/data/families, made by scripts/make_family_models.py: CPU, fp32, eager attention, the
// whole prompt attended, argmax per step with the model's own cache; prompts of 7, 61 and 1500 ids,
// the 1500 one longer than every sliding window (48) and phi3's original context (64)).
//
// Logit tolerance: as model_test.cpp (1e-5 * max|logit| per step): the same reductions (attention
// over <= 1500 keys, head_dim <= 32, hidden 64) in fp32, and gemma3's 7 layers compound a few more
// of them. The extra ops add at most a few ulps each: (1 + w) is formed in fp32 as transformers
// forms it, the embedding scale and softcaps are one fp32 multiply / tanh per element (tanh of
// libm and of torch differ by <= 1-2 ulp, and tanh's gain is <= 1), gelu_tanh likewise.
//
// phi3's longrope: transformers picks the short or long factors per forward call from that call's
// max position + 1 against original_max_position_embeddings (64 here), and KV cached earlier keeps
// the rotation it was stored with. We do the same: a prefill (in any number of chunks) counts as
// one call ending at the prompt's end; each decode step is a call of its own. So the 7-token case
// runs short throughout, the 61-token case switches to long factors at decode position 64 while its
// prompt KV keeps the short rotation, and the 1500-token case is long throughout.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "greedy_run.h"
#include "headinfer/engine.h"

namespace headinfer {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr float kLogitRtol = 1e-5f;

fs::path family_dir(const std::string& name) { return fs::path(HEADINFER_SOURCE_DIR) / "tests/data/families" / name; }

json read_ref(const std::string& arch) {
  std::ifstream in(family_dir(arch + "-f32") / "ref.json");
  return json::parse(in);
}

class FamilyModel : public ::testing::TestWithParam<std::string> {};

TEST_P(FamilyModel, F32GreedyAndLogitsMatchTransformers) {
  const std::string arch = GetParam();
  const json ref = read_ref(arch);
  ASSERT_EQ(ref["cases"].size(), 3u);
  for (const json& c : ref["cases"]) {
    const auto prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    const auto want = c["greedy_f32"].get<std::vector<int32_t>>();
    const test::GreedyRun r = test::run_greedy(family_dir(arch + "-f32"), prompt, static_cast<int64_t>(want.size()));
    EXPECT_EQ(r.tokens, want) << arch << " prompt of " << prompt.size();
    const float worst = test::expect_logits_near(
        r, family_dir(arch + "-f32") / ("ref_logits_" + std::to_string(prompt.size()) + ".npy"), kLogitRtol,
        arch + "/" + std::to_string(prompt.size()));
    std::printf("%s/%zu: largest logit difference %.3g of max|logit| (allowed %.0e)\n", arch.c_str(), prompt.size(),
                worst, kLogitRtol);
  }
}

TEST_P(FamilyModel, Bf16GreedyMatchesTransformersInFp32) {
  const std::string arch = GetParam();
  const json ref = read_ref(arch);
  ASSERT_EQ(ref["cases"].size(), 3u);
  for (const json& c : ref["cases"]) {
    const auto prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    const auto want = c["greedy_bf16"].get<std::vector<int32_t>>();
    const test::GreedyRun r = test::run_greedy(family_dir(arch + "-bf16"), prompt, static_cast<int64_t>(want.size()));
    EXPECT_EQ(r.tokens, want) << arch << " prompt of " << prompt.size();
  }
}

// Rows are independent and a chunked prefill is one longrope call, so chunking changes no bit
// (the 61-token prompt crosses phi3's original context only in decode; the 1500 one from chunk 1).
TEST_P(FamilyModel, ChunkSizeDoesNotChangeLogits) {
  const std::string arch = GetParam();
  const json ref = read_ref(arch);
  for (size_t i : {size_t{1}, size_t{2}}) {
    auto prompt = ref["cases"][i]["prompt_ids"].get<std::vector<int32_t>>();
    if (prompt.size() > 200) prompt.resize(200);  // crosses the windows (48) and phi3's 64 inside the prefill
    const fs::path dir = family_dir(arch + "-f32");
    const test::GreedyRun whole = test::run_greedy(dir, prompt, 4, 512);
    for (int64_t chunk : {1, 7, 60}) {
      const test::GreedyRun r = test::run_greedy(dir, prompt, 4, chunk);
      EXPECT_EQ(r.tokens, whole.tokens);
      for (size_t s = 0; s < r.logits.size(); ++s)
        EXPECT_EQ(r.logits[s], whole.logits[s]) << arch << " prompt " << prompt.size() << " chunk " << chunk;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, FamilyModel, ::testing::Values("gemma2", "gemma3", "phi3", "nemo"));

}  // namespace
}  // namespace headinfer
