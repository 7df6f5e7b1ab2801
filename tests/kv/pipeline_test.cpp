// The exactness contract for placements: logits and greedy tokens of the offload cache are
// bit-identical to the all-resident run for every offload mode, group size, chunk size and cap,
// on every tiny model and stories260k; the device pool never passes the cap.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/error.h"
#include "headinfer/head_store.h"
#include "headinfer/model.h"
#include "model_set.h"
#include "placement_run.h"
#include "testdata.h"

namespace headinfer {
namespace {

namespace fs = std::filesystem;

using test::all_models;
using test::random_prompt;

using RunResult = test::PlacementRun;

struct RunSpec {
  int64_t chunk = 7;
  int64_t n_decode = 4;
  KvPlacementOptions kv;
};

RunResult run(const Checkpoint& ckpt, const std::vector<int32_t>& prompt, const RunSpec& spec) {
  return test::run_placement(ckpt, prompt, spec.chunk, spec.n_decode, spec.kv);
}

// Bytes on the device before any KV: weights, activations, tables.
int64_t fixed_device_bytes(const Checkpoint& ckpt, int64_t context, int64_t chunk) {
  auto device = make_cpu_device({1, 0});
  Model model(ckpt, *device, {std::min(chunk, context), 512});
  return static_cast<int64_t>(device->bytes_in_use());
}

using test::expect_bit_identical;

// Prompt lengths per chunk size: several chunks each, the last one partial.
int64_t prompt_length(int64_t chunk) {
  switch (chunk) {
    case 1: return 23;
    case 7: return 40;
    case 97: return 250;
    default: return chunk + 103;
  }
}

class AllModels : public ::testing::TestWithParam<int64_t> {};

TEST_P(AllModels, EveryPlacementIsBitIdenticalToAllResident) {
  HEADINFER_REQUIRE_TESTDATA();
  const int64_t chunk = GetParam();
  for (const fs::path& dir : all_models()) {
    SCOPED_TRACE(dir.filename().string() + " chunk " + std::to_string(chunk));
    auto ckpt = Checkpoint::open(dir);
    const ModelConfig& c = ckpt->config();
    const auto prompt = random_prompt(prompt_length(chunk), c.vocab_size, 1234);
    RunSpec spec;
    spec.chunk = chunk;
    spec.n_decode = 4;
    spec.kv.offload = OffloadMode::None;
    const RunResult ref = run(*ckpt, prompt, spec);
    ASSERT_EQ(ref.plan.n_streamed_groups, 0);

    // --offload all with G in {1, 2, all kv heads}; G = 1 with late copies to expose ordering.
    std::vector<int64_t> groups = {1, 2, c.n_kv_heads};
    std::sort(groups.begin(), groups.end());
    groups.erase(std::unique(groups.begin(), groups.end()), groups.end());
    for (int64_t g : groups) {
      if (c.n_kv_heads % g != 0) continue;
      RunSpec s = spec;
      s.kv.offload = OffloadMode::All;
      s.kv.kv_group = g;
      s.kv.copy_jitter_us = g == 1 ? 30 : 0;
      const RunResult got = run(*ckpt, prompt, s);
      EXPECT_EQ(got.plan.n_resident_groups, 0);
      expect_bit_identical(ref, got, "offload all, G " + std::to_string(g));
    }

    // --offload auto under caps that leave 1, about half, and n - 3 groups resident (G = 1): with a
    // 2-slot ring, n - 3 is the most that can stay resident while anything streams.
    const int64_t context = static_cast<int64_t>(prompt.size()) + spec.n_decode;
    const int64_t fixed = fixed_device_bytes(*ckpt, context, chunk);
    const int64_t n_blocks = c.n_layers * c.n_kv_heads;
    KvPlacementOptions split;
    split.kv_group = 1;
    const auto caps = test::resident_caps(c, fixed, context, chunk, {1, n_blocks / 2, n_blocks - 3}, split);
    EXPECT_GE(caps.size(), 2u);
    for (auto [resident, cap] : caps) {
      RunSpec s = spec;
      s.kv.offload = OffloadMode::Auto;
      s.kv.kv_group = 1;
      s.kv.gpu_mem = cap;
      const RunResult got = run(*ckpt, prompt, s);
      EXPECT_EQ(got.plan.n_resident_groups, resident);
      EXPECT_GT(got.plan.n_streamed_groups, 0);
      expect_bit_identical(ref, got, "offload auto, " + std::to_string(resident) + " resident");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Chunks, AllModels, ::testing::Values(1, 7, 97, 1500),
                         [](const auto& info) { return "chunk" + std::to_string(info.param); });

TEST(OffloadCache, ResetStartsOverAndMatches) {
  HEADINFER_REQUIRE_TESTDATA();
  auto ckpt = Checkpoint::open(test::testdata_dir() / "models" / "stories260k");
  const auto prompt = random_prompt(30, ckpt->config().vocab_size, 7);
  auto device = make_cpu_device({2, 0});
  EngineOptions eo;
  eo.context = 40;
  eo.chunk = 8;
  eo.kv.offload = OffloadMode::All;
  eo.kv.kv_group = 1;
  Engine engine(*ckpt, *device, eo);
  engine.prefill(std::span<const int32_t>(prompt).first(13));  // leaves fetches in flight for position 13
  engine.reset();
  const auto a = engine.prefill(prompt);
  const std::vector<float> once(a.begin(), a.end());
  engine.reset();
  const auto b = engine.prefill(prompt);
  EXPECT_EQ(0, std::memcmp(once.data(), b.data(), once.size() * sizeof(float)));
}

// Errors: one clear line before any work.
void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line: " << e.what();
  }
}

TEST(OffloadCache, ClearErrors) {
  HEADINFER_REQUIRE_TESTDATA();
  auto ckpt = Checkpoint::open(test::testdata_dir() / "models" / "tiny" / "llama3-f32");
  const ModelConfig& c = ckpt->config();
  const auto prompt = random_prompt(20, c.vocab_size, 3);

  expect_error([&] {  // a prompt longer than the context
    auto device = make_cpu_device({1, 0});
    EngineOptions eo;
    eo.context = 10;
    Engine engine(*ckpt, *device, eo);
    generate(engine, prompt, {});
  }, "does not fit the context");

  expect_error([&] {  // a cap below the weights
    const int64_t cap = 1000;
    auto device = make_cpu_device({1, static_cast<size_t>(cap)});
    EngineOptions eo;
    eo.context = 64;
    eo.kv.gpu_mem = cap;
    Engine engine(*ckpt, *device, eo);
  }, "weights alone need");

  expect_error([&] {  // a host too small for the offloaded KV
    auto device = make_cpu_device({1, 0});
    EngineOptions eo;
    eo.context = 64;
    eo.kv.offload = OffloadMode::All;
    eo.kv.host_mem = 4096;
    Engine engine(*ckpt, *device, eo);
  }, "host-tier KV needs");

  expect_error([&] {  // everything resident does not fit the cap, even with 1-token chunks
    const int64_t cap = fixed_device_bytes(*ckpt, 64, 1) + 100;
    auto device = make_cpu_device({1, static_cast<size_t>(cap)});
    EngineOptions eo;
    eo.context = 64;
    eo.kv.offload = OffloadMode::None;
    eo.kv.gpu_mem = cap;
    Engine engine(*ckpt, *device, eo);
  }, "--offload none");

  expect_error([&] {  // a group size that does not divide the kv heads
    auto device = make_cpu_device({1, 0});
    EngineOptions eo;
    eo.context = 64;
    eo.kv.kv_group = 3;
    Engine engine(*ckpt, *device, eo);
  }, "--kv-group 3");
}

TEST(OffloadCache, ContextBeyondMaxPositionsRunsWithAWarning) {
  HEADINFER_REQUIRE_TESTDATA();
  auto ckpt = Checkpoint::open(test::testdata_dir() / "models" / "stories260k");
  ModelConfig c = ckpt->config();
  const int64_t context = c.max_position_embeddings + 16;
  PlannerInput in;
  in.config = c;
  in.context = context;
  in.kv_elem_bytes = 4;
  const Plan p = make_plan(in);
  EXPECT_TRUE(p.fits);
  ASSERT_EQ(p.warnings.size(), 1u);
  EXPECT_NE(p.warnings[0].find("max_position_embeddings"), std::string::npos);
  auto device = make_cpu_device({2, 0});
  EngineOptions eo;
  eo.context = context;
  eo.chunk = 1024;
  eo.kv.offload = OffloadMode::All;
  eo.kv.kv_group = 2;
  Engine engine(*ckpt, *device, eo);
  const auto prompt = random_prompt(context, c.vocab_size, 11);
  const auto logits = engine.prefill(prompt);
  EXPECT_TRUE(std::all_of(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); }));
}

}  // namespace
}  // namespace headinfer
