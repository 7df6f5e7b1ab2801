// End to end: the Model on the CUDA device against the same Model on the CPU device, with the
// simple KV cache, for every shared tiny model and stories260k. f32 checkpoints: greedy ids must be
// identical (to each other and to the recorded greedy_f32). bf16 checkpoints: identical ids for
// the short prompt (decode-sized GEMMs run in fp32 like the CPU); for longer prompts the prefill
// GEMMs round activations to bf16, so only the logits' relative error is checked.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "cuda_ops.h"
#include "cuda_test_util.h"
#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/model.h"
#include "decode_ahead_run.h"
#include "testdata.h"

namespace headinfer::test {
namespace {

namespace fs = std::filesystem;

struct Run {
  std::vector<int32_t> greedy;
  std::vector<float> prefill_logits;  // [vocab] after the prompt
};

int32_t argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

Run generate(const Checkpoint& ckpt, Device& device, const std::vector<int32_t>& prompt, size_t n_new) {
  const ForwardWorkspaceSizes sizes{512, 512};
  Model model(ckpt, device, sizes);
  auto kv = make_simple_kv_cache(device, ckpt.config(), static_cast<int64_t>(prompt.size() + n_new));
  std::vector<float> logits(static_cast<size_t>(ckpt.config().vocab_size));
  Run run;
  int64_t pos = 0;
  for (size_t i = 0; i < prompt.size(); i += 512) {
    const size_t len = std::min<size_t>(512, prompt.size() - i);
    model.forward(std::span(prompt).subspan(i, len), pos, *kv, logits, static_cast<int64_t>(prompt.size()));
    pos += static_cast<int64_t>(len);
  }
  run.prefill_logits = logits;
  for (size_t s = 0; s < n_new; ++s) {
    const int32_t id = argmax(logits);
    run.greedy.push_back(id);
    if (s + 1 == n_new) break;
    model.forward(std::span(&id, 1), pos++, *kv, logits);
  }
  return run;
}

double relative_error(const std::vector<float>& got, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (got[i] - ref[i]) * static_cast<double>(got[i] - ref[i]);
    den += ref[i] * static_cast<double>(ref[i]);
  }
  return std::sqrt(num / den);
}

void check_model(Device& gpu, Device& cpu, const fs::path& dir, const std::vector<int32_t>& prompt,
                 const std::vector<int32_t>& expected, bool exact, const std::string& label) {
  auto ckpt = Checkpoint::open(dir);
  const size_t n_new = expected.size();
  const Run g = generate(*ckpt, gpu, prompt, n_new);
  const Run c = generate(*ckpt, cpu, prompt, n_new);
  const double rel = relative_error(g.prefill_logits, c.prefill_logits);
  std::printf("[model] %-40s prompt=%zu new=%zu logits rel err=%.3e greedy %s\n", label.c_str(), prompt.size(), n_new,
              rel, g.greedy == c.greedy ? "identical" : "DIFFERENT");
  // Agreement with the recorded ids is the model's and the CPU backend's business (foundation
  // tests); here it is only reported, so a difference there does not read as a CUDA failure.
  std::printf("[model] %-40s recorded ids %s\n", label.c_str(), c.greedy == expected ? "matched" : "NOT matched (CPU too)");
  if (exact) {
    EXPECT_EQ(g.greedy, c.greedy) << label;
    // fp32 end to end, different summation orders: far under the bf16 scale.
    EXPECT_LT(rel, 1e-4) << label;
  } else {
    // bf16 rounding of activations in each prefill GEMM (2^-9 relative), through a few layers.
    EXPECT_LT(rel, 3e-2) << label;
  }
}

// Every <arch>-{f32,bf16} folder under root against the CPU; returns how many models ran.
int check_model_folder(Device& gpu, Device& cpu, const fs::path& root) {
  EXPECT_TRUE(fs::is_directory(root)) << root;
  int n_models = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    if (!entry.is_directory()) continue;  // tests/data/families has a README beside the models
    const fs::path dir = entry.path();
    const std::string name = dir.filename().string();
    const bool f32 = name.ends_with("-f32");
    // The bf16 folders have no ref.json: their recorded ids sit in the f32 sibling's, as greedy_bf16.
    const std::string base = name.substr(0, name.rfind('-'));
    std::ifstream in(root / (base + "-f32") / "ref.json");
    EXPECT_TRUE(in) << dir;
    if (!in) continue;
    const auto ref = nlohmann::json::parse(in);
    int case_index = 0;
    for (const auto& c : ref["cases"]) {
      const auto prompt = c["prompt_ids"].get<std::vector<int32_t>>();
      const auto expected = c[f32 ? "greedy_f32" : "greedy_bf16"].get<std::vector<int32_t>>();
      // bf16 prompts above 8 tokens take the bf16 tensor-core GEMM: not bit-comparable to the CPU.
      const bool exact = f32 || prompt.size() <= 8;
      check_model(gpu, cpu, dir, prompt, expected, exact, name + " case " + std::to_string(case_index++));
    }
    ++n_models;
  }
  return n_models;
}

// decode_greedy's and decode_sampled's `ahead` on the GPU: the queued step is a graph recorded
// while the step before it runs, its token read from the device's pick; counted or dropped, every
// token and logit is the same bits as one step at a time (decode_ahead_run.h). Each engine on a
// device of its own.
TEST_F(CudaTest, DecodeAheadChangesNoBit) {
  HEADINFER_REQUIRE_TESTDATA();
  for (const char* arch : {"llama3-bf16", "mistral_swa-bf16"}) {
    const auto ckpt = Checkpoint::open(testdata_dir() / "models" / "tiny" / arch);
    auto da = make_cuda_device({}), dr = make_cuda_device({});
    test::check_decode_ahead(*ckpt, *da, *dr, arch, true);
    test::check_decode_ahead_sampled(*ckpt, *da, *dr, arch);
  }
}

// EngineOptions::prompt_tokens builds the first chunk's cuDNN graphs while the weights copy: with
// the prompt's length, another length, or none, the logits and the greedy ids are the same bits
// (bf16 models, prompts past kCudnnMinQueries so the prefill attention is cuDNN's; mistral_swa's
// window layers make a second graph kind).
TEST_F(CudaTest, EnginePromptHintChangesNoBit) {
  HEADINFER_REQUIRE_TESTDATA();
  for (const char* arch : {"llama3-bf16", "mistral_swa-bf16"}) {
    const auto ckpt = Checkpoint::open(testdata_dir() / "models" / "tiny" / arch);
    std::vector<int32_t> prompt;
    for (int32_t i = 0; i < 70; ++i) prompt.push_back(1 + (i * 7) % 200);
    for (int64_t chunk : {0, 32}) {
      std::vector<std::vector<float>> logits;
      std::vector<std::vector<int32_t>> greedy;
      for (int64_t hint : {0, 70, 40, 1000}) {
        EngineOptions eo;
        eo.context = 80;
        eo.chunk = chunk;
        eo.prompt_tokens = hint;
        Engine e(*ckpt, *gpu_, eo);
        const auto l = e.prefill(prompt);
        logits.emplace_back(l.begin(), l.end());
        std::vector<int32_t> ids{argmax(logits.back())};
        for (int i = 0; i < 6; ++i) ids.push_back(e.decode_greedy(ids.back()));
        greedy.push_back(ids);
      }
      for (size_t k = 1; k < logits.size(); ++k) {
        EXPECT_EQ(logits[k], logits[0]) << arch << " chunk " << chunk << " hint case " << k;
        EXPECT_EQ(greedy[k], greedy[0]) << arch << " chunk " << chunk << " hint case " << k;
      }
    }
  }
}

// With the prompt's length given, the first chunk's GEMMs are planned (and their kernels run once)
// while the weights copy: the prefill plans none inline. Without it, it plans them itself. The
// plans are cached per shape on the device, so each case has a prompt length of its own.
TEST_F(CudaTest, EnginePromptHintPlansFirstChunkGemms) {
  HEADINFER_REQUIRE_TESTDATA();
  auto* ops = dynamic_cast<cuda::CudaOps*>(&gpu_->ops());
  ASSERT_NE(ops, nullptr);
  const auto ckpt = Checkpoint::open(testdata_dir() / "models" / "tiny" / "llama3-bf16");
  for (const bool hint : {true, false}) {
    const int32_t n = hint ? 61 : 59;  // past the GEMV's 8 rows: the prefill takes cuBLASLt
    std::vector<int32_t> prompt;
    for (int32_t i = 0; i < n; ++i) prompt.push_back(1 + (i * 11) % 200);
    EngineOptions eo;
    eo.context = 80;
    eo.prompt_tokens = hint ? n : 0;
    const int64_t inline0 = ops->gemm_plans_inline(), ahead0 = ops->gemm_plans_ahead();
    Engine e(*ckpt, *gpu_, eo);
    e.prefill(prompt);
    const int64_t made_inline = ops->gemm_plans_inline() - inline0, ahead = ops->gemm_plans_ahead() - ahead0;
    if (hint) {
      EXPECT_EQ(made_inline, 0);
      EXPECT_GE(ahead, 4);  // q/k/v, o_proj, gate/up, down at least
    } else {
      EXPECT_GE(made_inline, 4);
      EXPECT_EQ(ahead, 0);
    }
  }
}

TEST_F(CudaTest, TinyModelsMatchCpu) {
  HEADINFER_REQUIRE_TESTDATA();
  EXPECT_GE(check_model_folder(*gpu_, *cpu_, testdata_dir() / "models" / "tiny"), 14);
}

// gemma2 (softcaps: the CUDA-core attention path), gemma3_text, phi3 (longrope, partial rotary),
// explicit head_dim: the repo's own tiny checkpoints.
TEST_F(CudaTest, FamilyModelsMatchCpu) {
  EXPECT_EQ(check_model_folder(*gpu_, *cpu_, fs::path(HEADINFER_SOURCE_DIR) / "tests" / "data" / "families"), 8);
}

TEST_F(CudaTest, Stories260kMatchesCpu) {
  HEADINFER_REQUIRE_TESTDATA();
  const fs::path dir = testdata_dir() / "models" / "stories260k";
  std::ifstream in(dir / "reference.json");
  ASSERT_TRUE(in) << dir;
  const auto ref = nlohmann::json::parse(in);
  for (const auto& c : ref) {
    const auto prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    auto expected = c["greedy_ids"].get<std::vector<int32_t>>();
    expected.resize(std::min<size_t>(expected.size(), 32));
    check_model(*gpu_, *cpu_, dir, prompt, expected, true, "stories260k");
  }
}

}  // namespace
}  // namespace headinfer::test
