// Hybrid decode on the CPU backend: the CPU-attended host-tier groups go through the host
// attention kernel on the host stream while the others stream through the ring, and the result
// equals the all-resident run up to the host kernel's fp32 rounding, on every tiny model and
// stories260k, for forced splits (every host-tier group on the CPU, half, none) and for the
// bandwidth-balanced split, with and without resident groups.
//
// What is exact and what is not:
//  - Prefill chunks never use the host path, so the logits after the prompt are bit-identical.
//  - A split with no CPU group is the plain pipeline: bit-identical everywhere.
//  - A CPU-attended head is attended whole by the host kernel, so the cache merges nothing; its
//    output differs from CpuOps::attention only by the order of fp32 operations (SIMD lanes,
//    32-key tiles, split-KV merge, polynomial exp). The head's keys live in host-tier slabs, which
//    the kernel reads as pages: it cuts a split at each slab boundary as well, so a head over k
//    slabs is k - 1 more splits in the kernel's one merge (no second merge level). Both are within
//    the bound derived in host_attention_test.cpp of the exact value: relative to sum p|v| / sum p,
//    2 eps_p + 2 gamma_D + 2u with eps_p ~ 2 scale gamma_d sum|q k| + u |s - m| + 6u and depth
//    D = 32 + ceil(split_len / 32) + n_splits + 2. For these models (head_dim <= 32, |s| of a few
//    units, <= 60 keys) and slabs of 16 positions (n_splits <= 4, D <= 39) it is below 2e-5, as
//    with one slab (D = 36); CpuOps's own sequential sums (depth n <= 60) add gamma_60 ~ 4e-6. So
//    attention outputs differ by less than about 3e-5 of their scale. With a CPU part the decode logits were not bit-identical in
//    these runs (different summation order, even where the CPU attends a head whole); the test
//    prints the largest difference.
//  - Downstream every op is the same, so the logits move by the attention difference times the
//    gain of the remaining layers and the LM head. Measured on these models the logits differ by
//    at most a few 1e-6 of max|logit|; the check allows kLogitRtol = 1e-4 of max|logit| per token
//    (3 to 5 layers, each amplifying a relative perturbation by well under 10x), and requires the
//    greedy tokens to be identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/head_store.h"
#include "headinfer/model.h"
#include "model_set.h"
#include "placement_run.h"
#include "testdata.h"

namespace headinfer {
namespace {

namespace fs = std::filesystem;

constexpr double kLogitRtol = 1e-4;

using test::all_models;
using test::random_prompt;

using RunResult = test::PlacementRun;

constexpr int64_t kChunk = 7;
constexpr int64_t kPrompt = 40;
constexpr int64_t kDecode = 12;

// Prompt in chunks of 7, then greedy decode steps, on Model + the planned cache directly.
RunResult run(const Checkpoint& ckpt, const std::vector<int32_t>& prompt, const KvPlacementOptions& kv_options) {
  return test::run_placement(ckpt, prompt, kChunk, kDecode, kv_options);
}

// Every head block offloaded in groups of `group` kv heads, `cpu_groups` of them attended on the CPU
// in decode (2 host threads), the rest streamed: what each test varies around.
KvPlacementOptions on_cpu(KvPlacementOptions base, int64_t group, int64_t cpu_groups) {
  base.offload = OffloadMode::All;
  base.kv_group = group;
  base.hybrid = HybridMode::Auto;
  base.cpu_groups = cpu_groups;
  base.host_threads = 2;
  return base;
}

// Largest |difference| / max|ref logit| over the decode steps; the prompt's logits bit-identical.
double compare(const RunResult& ref, const RunResult& got, int64_t vocab, const std::string& what) {
  EXPECT_EQ(ref.tokens, got.tokens) << what << ": greedy tokens differ";
  EXPECT_EQ(0, std::memcmp(ref.logits.data(), got.logits.data(), static_cast<size_t>(vocab) * sizeof(float)))
      << what << ": prefill logits must not change (prefill does not use the host path)";
  double worst = 0.0;
  const size_t n_rows = ref.logits.size() / static_cast<size_t>(vocab);
  for (size_t row = 1; row < n_rows; ++row) {
    const float* a = ref.logits.data() + row * static_cast<size_t>(vocab);
    const float* b = got.logits.data() + row * static_cast<size_t>(vocab);
    double scale = 0.0, diff = 0.0;
    for (int64_t i = 0; i < vocab; ++i) {
      scale = std::max(scale, std::abs(static_cast<double>(a[i])));
      diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    }
    worst = std::max(worst, diff / scale);
  }
  EXPECT_LE(worst, kLogitRtol) << what << ": decode logits differ by " << worst << " of max|logit|";
  return worst;
}

TEST(HybridDecode, EqualsAllResidentOnEveryModel) {
  HEADINFER_REQUIRE_TESTDATA();
  double worst_all = 0.0;
  for (const fs::path& dir : all_models()) {
    SCOPED_TRACE(dir.filename().string());
    auto ckpt = Checkpoint::open(dir);
    const ModelConfig& c = ckpt->config();
    const auto prompt = random_prompt(kPrompt, c.vocab_size, 4321);
    KvPlacementOptions base;
    base.offload = OffloadMode::None;
    const RunResult ref = run(*ckpt, prompt, base);

    // Every group on the host (G = 1), the CPU taking all, half or none of them; late copies on
    // the copy streams so a missing event shows as wrong numbers.
    const int64_t n_host = c.n_layers * c.n_kv_heads;
    for (int64_t k : {n_host, n_host / 2, int64_t{0}}) {
      KvPlacementOptions o = on_cpu({}, 1, k);
      o.copy_jitter_us = 30;
      const RunResult got = run(*ckpt, prompt, o);
      EXPECT_EQ(got.plan.n_cpu_groups, k);
      const std::string what = "offload all, G 1, " + std::to_string(k) + " of " + std::to_string(n_host) + " on the CPU";
      if (k == 0) {
        EXPECT_EQ(0, std::memcmp(ref.logits.data(), got.logits.data(), ref.logits.size() * sizeof(float)))
            << what << ": no CPU group must be the plain pipeline, bit for bit";
        EXPECT_EQ(ref.tokens, got.tokens) << what;
      } else {
        worst_all = std::max(worst_all, compare(ref, got, c.vocab_size, what));
      }
    }

    // Whole-layer groups (G = all kv heads), all on the CPU: several heads per host task.
    {
      const KvPlacementOptions o = on_cpu({}, c.n_kv_heads, c.n_layers);
      worst_all = std::max(worst_all, compare(ref, run(*ckpt, prompt, o), c.vocab_size, "G all, every group on the CPU"));
    }

    // The bandwidth-balanced split (H200 machine numbers: link 54, host read 86 GB/s), with every
    // group on the host and with about half of them resident.
    for (bool some_resident : {false, true}) {
      KvPlacementOptions o;
      o.offload = some_resident ? OffloadMode::Auto : OffloadMode::All;
      o.kv_group = 1;
      o.hybrid = HybridMode::Auto;
      o.link_gbps = 54.0;
      o.dram_gbps = 86.0;
      o.host_threads = 2;
      if (some_resident) {
        auto probe = make_cpu_device({1, 0});
        const int64_t context = kPrompt + kDecode;
        Model m(*ckpt, *probe, {kChunk, 512});
        const int64_t fixed = static_cast<int64_t>(probe->bytes_in_use());
        o.gpu_mem = test::cap_for_resident(c, fixed, context, kChunk, n_host / 2, o);
      }
      const RunResult got = run(*ckpt, prompt, o);
      const int64_t S = got.plan.n_streamed_groups;
      EXPECT_GT(got.plan.n_cpu_groups, 0);
      EXPECT_LT(got.plan.n_cpu_groups, S + 1);
      if (some_resident) {
        EXPECT_GT(got.plan.n_resident_groups, 0);
      }
      worst_all = std::max(worst_all, compare(ref, got, c.vocab_size,
                                              std::string("balanced split") + (some_resident ? ", some resident" : "")));
    }
  }
  std::printf("hybrid decode: largest decode-logit difference %.3g of max|logit| (allowed %.0e)\n", worst_all,
              kLogitRtol);
}

// BF16 and F16 KV (what the CUDA device stores for bf16/f16 checkpoints): the CPU groups' new rows
// are rounded to the KV dtype on the device before going home, and the host kernel reads the
// narrow rows. The reference is the all-resident run with the same KV dtype (CpuOps::attention
// widens each stored row, so it sums the same values as the host kernel in its own order).
// Prefill is bit-identical as above. In decode, the first step differs only by the host kernel's
// fp32 rounding (the bound above, ~3e-5 of the attention scale); from then on an activation that
// moved by that relative amount delta may round to the neighbouring BF16 (F16) value when stored:
// one ulp, 2^-7 (2^-10) of the element, with probability about delta / ulp. The expected change of
// a stored element is therefore about delta again, but its spread is larger (sqrt(delta * ulp)
// ~ 5e-4 for one BF16 element), diluted in the output by the softmax average over the keys and
// the other d - 1 coordinates of each dot product. Measured: 1.5e-5 of max|logit| at most, ten
// times the F32 KV runs and below the same kLogitRtol; greedy tokens must match.
TEST(HybridDecode, NarrowKvEqualsAllResidentOnEveryModel) {
  HEADINFER_REQUIRE_TESTDATA();
  double worst_all = 0.0;
  for (DType kv : {DType::BF16, DType::F16})
    for (const fs::path& dir : all_models()) {
      SCOPED_TRACE(dir.filename().string() + " " + std::string(dtype_name(kv)));
      auto ckpt = Checkpoint::open(dir);
      const ModelConfig& c = ckpt->config();
      const auto prompt = random_prompt(kPrompt, c.vocab_size, 4322);
      KvPlacementOptions base;
      base.offload = OffloadMode::None;
      base.kv_dtype = kv;
      const RunResult ref = run(*ckpt, prompt, base);
      const int64_t n_host = c.n_layers * c.n_kv_heads;
      for (int64_t k : {n_host, n_host / 2}) {
        KvPlacementOptions o = on_cpu(base, 1, k);
        o.copy_jitter_us = 30;
        const RunResult got = run(*ckpt, prompt, o);
        EXPECT_EQ(got.plan.n_cpu_groups, k);
        worst_all = std::max(worst_all, compare(ref, got, c.vocab_size,
                                                std::to_string(k) + " of " + std::to_string(n_host) + " on the CPU"));
      }
      const KvPlacementOptions o = on_cpu(base, c.n_kv_heads, c.n_layers);
      worst_all = std::max(worst_all, compare(ref, run(*ckpt, prompt, o), c.vocab_size, "G all, every group on the CPU"));
    }
  std::printf("hybrid decode, BF16/F16 KV: largest decode-logit difference %.3g of max|logit| (allowed %.0e)\n",
              worst_all, kLogitRtol);
}

// Slabs of 16 positions: each CPU-attended head spans 3 or 4 slabs in decode (the host kernel
// merges the slab-cut splits, see the top of the file), and the prompt's chunks of 7 are fetched
// and written back across slab boundaries (prefill logits still bit-identical). F32 and BF16 KV.
TEST(HybridDecode, HeadsOverSeveralSlabs) {
  HEADINFER_REQUIRE_TESTDATA();
  double worst[2] = {0.0, 0.0};  // F32, BF16 KV
  for (DType kv : {DType::F32, DType::BF16})
    for (const fs::path& dir : all_models()) {
      SCOPED_TRACE(dir.filename().string() + " " + std::string(dtype_name(kv)));
      auto ckpt = Checkpoint::open(dir);
      const ModelConfig& c = ckpt->config();
      const auto prompt = random_prompt(kPrompt, c.vocab_size, 4323);
      KvPlacementOptions base;
      base.offload = OffloadMode::None;
      base.kv_dtype = kv;
      const RunResult ref = run(*ckpt, prompt, base);
      const int64_t n_host = c.n_layers * c.n_kv_heads;
      for (auto [group, k] : {std::pair<int64_t, int64_t>{1, n_host}, {1, n_host / 2}, {c.n_kv_heads, c.n_layers}}) {
        KvPlacementOptions o = on_cpu(base, group, k);
        o.copy_jitter_us = 30;
        o.host_slab_positions = 16;
        const RunResult got = run(*ckpt, prompt, o);
        EXPECT_EQ(got.plan.n_cpu_groups, k);
        EXPECT_EQ(got.plan.host_slab_positions, 16);
        double& w = worst[kv == DType::F32 ? 0 : 1];
        w = std::max(w, compare(ref, got, c.vocab_size,
                                "G " + std::to_string(group) + ", " + std::to_string(k) + " of " +
                                    std::to_string(n_host / group) + " groups on the CPU, slabs of 16"));
      }
    }
  std::printf("hybrid decode, slabs of 16: largest decode-logit difference %.3g (F32 KV), %.3g (BF16 KV) of "
              "max|logit| (allowed %.0e)\n",
              worst[0], worst[1], kLogitRtol);
}

// After decode steps with a CPU part, a prompt continues through the ring (prefill fetches every
// host-tier group, including the rows the decode steps wrote home from the CPU side).
TEST(HybridDecode, PrefillAfterDecodeSeesTheDecodeRows) {
  HEADINFER_REQUIRE_TESTDATA();
  auto ckpt = Checkpoint::open(test::testdata_dir() / "models" / "stories260k");
  const ModelConfig& c = ckpt->config();
  const auto prompt = random_prompt(20, c.vocab_size, 99);
  const auto more = random_prompt(9, c.vocab_size, 100);
  auto go = [&](const KvPlacementOptions& kv) {
    auto device = make_cpu_device({2, 0});
    EngineOptions eo;
    eo.context = 64;
    eo.chunk = 8;
    eo.kv = kv;
    Engine engine(*ckpt, *device, eo);
    std::vector<float> out;
    engine.prefill(prompt);
    for (int i = 0; i < 5; ++i) engine.decode(static_cast<int32_t>(i + 3));
    const auto logits = engine.prefill(more);
    out.assign(logits.begin(), logits.end());
    const auto last = engine.decode(7);
    out.insert(out.end(), last.begin(), last.end());
    return out;
  };
  KvPlacementOptions ref;
  ref.offload = OffloadMode::None;
  KvPlacementOptions hyb;
  hyb.offload = OffloadMode::All;
  hyb.kv_group = 1;
  hyb.hybrid = HybridMode::Auto;
  hyb.cpu_groups = c.n_layers * c.n_kv_heads / 2;
  hyb.host_threads = 2;
  hyb.copy_jitter_us = 30;
  const auto a = go(ref), b = go(hyb);
  ASSERT_EQ(a.size(), b.size());
  double scale = 0.0, diff = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::abs(static_cast<double>(a[i])));
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  EXPECT_LE(diff / scale, kLogitRtol);
}

}  // namespace
}  // namespace headinfer
