// Decode-only benchmarks (issue 6): KvCache::fill_random / Engine::fill_random_context stand in for
// a prefill. The random K/V values depend only on (seed, layer, head, K/V, position, channel), so a
// decode after the fill must give bit-identical logits wherever the head blocks live (all on the
// device, all streamed from the host, split), at any group size, and on the simple cache.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/error.h"
#include "headinfer/head_store.h"
#include "headinfer/model.h"
#include "headinfer/random_model.h"

namespace headinfer {
namespace {

// Awkward sizes: a context that is no power of two, filled short of its end.
constexpr int64_t kContext = 1500;
constexpr int64_t kFilled = 1371;
constexpr int64_t kDecode = 9;
constexpr uint64_t kSeed = 97;

std::unique_ptr<Checkpoint> tiny_model() { return Checkpoint::random(builtin_shape_config("tiny"), DType::F32, 5); }

struct Decoded {
  std::vector<float> logits;    // [kDecode, vocab]
  std::vector<int32_t> tokens;  // greedy picks; the first step decodes token 3
  Plan plan;
};

// Greedy decode of n steps from token 3 at the engine's current position.
void decode_steps(Engine& engine, int64_t n, Decoded* out) {
  int32_t next = 3;
  for (int64_t i = 0; i < n; ++i) {
    const std::span<const float> logits = engine.decode(next);
    out->logits.insert(out->logits.end(), logits.begin(), logits.end());
    next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out->tokens.push_back(next);
  }
}

Decoded fill_and_decode(const Checkpoint& ckpt, KvPlacementOptions kv, int64_t device_cap = 0,
                        uint64_t seed = kSeed) {
  auto device = make_cpu_device({2, static_cast<size_t>(device_cap)});
  EngineOptions eo;
  eo.context = kContext;
  eo.chunk = 16;
  kv.gpu_mem = device_cap;
  eo.kv = kv;
  Engine engine(ckpt, *device, eo);
  engine.fill_random_context(kFilled, seed);
  EXPECT_EQ(engine.n_past(), kFilled);
  Decoded d;
  d.plan = *kv_cache_plan(engine.kv_cache());
  decode_steps(engine, kDecode, &d);
  return d;
}

void expect_identical(const Decoded& ref, const Decoded& got, const std::string& what) {
  EXPECT_EQ(ref.tokens, got.tokens) << what;
  ASSERT_EQ(ref.logits.size(), got.logits.size()) << what;
  EXPECT_EQ(0, std::memcmp(ref.logits.data(), got.logits.data(), ref.logits.size() * sizeof(float)))
      << what << ": logits after the random fill are not bit-identical to the all-resident run";
}

KvPlacementOptions placement(OffloadMode mode, int64_t kv_group, DType dtype = DType::F32) {
  KvPlacementOptions o;
  o.offload = mode;
  o.kv_group = kv_group;
  o.kv_dtype = dtype;
  return o;
}

TEST(FillRandom, DecodeIsDeterministicAndSeedDependent) {
  const auto ckpt = tiny_model();
  const Decoded a = fill_and_decode(*ckpt, placement(OffloadMode::None, 0));
  expect_identical(a, fill_and_decode(*ckpt, placement(OffloadMode::None, 0)), "same seed twice");
  const Decoded other = fill_and_decode(*ckpt, placement(OffloadMode::None, 0), 0, kSeed + 1);
  EXPECT_NE(0, std::memcmp(a.logits.data(), other.logits.data(), a.logits.size() * sizeof(float)))
      << "another seed must give other K/V, hence other logits";
}

TEST(FillRandom, SameLogitsOnEveryPlacement) {
  const auto ckpt = tiny_model();
  for (DType dtype : {DType::F32, DType::BF16, DType::F16}) {
    const std::string name(dtype_name(dtype));
    const Decoded ref = fill_and_decode(*ckpt, placement(OffloadMode::None, 0, dtype));
    EXPECT_EQ(ref.plan.n_streamed_groups, 0);
    for (int64_t group : {1, 2}) {
      const Decoded all = fill_and_decode(*ckpt, placement(OffloadMode::All, group, dtype));
      EXPECT_EQ(all.plan.n_resident_groups, 0);
      expect_identical(ref, all, name + " offload all, kv group " + std::to_string(group));
    }
    // Small host-tier slabs: the fill writes each head's rows slab by slab (1371 rows end inside a
    // slab of 64 and of 37; the context, 1500, is no multiple of either), decode appends to that slab.
    for (int64_t slab : {64, 37}) {
      KvPlacementOptions o = placement(OffloadMode::All, 1, dtype);
      o.host_slab_positions = slab;
      const Decoded all = fill_and_decode(*ckpt, o);
      EXPECT_EQ(all.plan.host_slab_positions, slab);
      expect_identical(ref, all, name + " offload all, slabs of " + std::to_string(slab));
    }
    // Auto under a cap that holds the weights and three of the four single-head groups (ring slots
    // included): some groups resident, some streamed.
    const ModelConfig& c = ckpt->config();
    auto probe = make_cpu_device({1, 0});
    Model weights_only(*ckpt, *probe, {16, 512});
    const auto fixed = static_cast<int64_t>(probe->bytes_in_use());
    const int64_t group_bytes = 2 * kContext * c.head_dim * static_cast<int64_t>(dtype_size(dtype));
    const int64_t cap = fixed + (c.n_layers * c.n_kv_heads - 1) * group_bytes;
    const Decoded split = fill_and_decode(*ckpt, placement(OffloadMode::Auto, 1, dtype), cap);
    EXPECT_GT(split.plan.n_resident_groups, 0) << name;
    EXPECT_GT(split.plan.n_streamed_groups, 0) << name;
    expect_identical(ref, split, name + " offload auto (split)");
  }
}

TEST(FillRandom, SimpleCacheHoldsTheSameValues) {
  const auto ckpt = tiny_model();
  const Decoded ref = fill_and_decode(*ckpt, placement(OffloadMode::All, 1));
  auto device = make_cpu_device({2, 0});
  Model model(*ckpt, *device, {16, 512});
  auto kv = make_simple_kv_cache(*device, ckpt->config(), kContext);
  kv->fill_random(kFilled, kSeed);
  std::vector<float> logits(static_cast<size_t>(ckpt->config().vocab_size));
  Decoded got;
  int32_t next = 3;
  for (int64_t i = 0; i < kDecode; ++i) {
    model.forward(std::span<const int32_t>(&next, 1), kFilled + i, *kv, logits);
    got.logits.insert(got.logits.end(), logits.begin(), logits.end());
    next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    got.tokens.push_back(next);
  }
  expect_identical(ref, got, "simple cache");
}

// A second fill replaces everything: ring slots prefetched for the first context must not leak
// stale rows into the second.
TEST(FillRandom, RefillReplacesTheContext) {
  const auto ckpt = tiny_model();
  for (OffloadMode mode : {OffloadMode::None, OffloadMode::All}) {
    auto device = make_cpu_device({2, 0});
    EngineOptions eo;
    eo.context = kContext;
    eo.chunk = 16;
    eo.kv = placement(mode, 1);
    Engine engine(*ckpt, *device, eo);
    engine.fill_random_context(kFilled, kSeed + 7);
    Decoded first;
    decode_steps(engine, 4, &first);
    engine.fill_random_context(kFilled, kSeed);
    Decoded again;
    decode_steps(engine, kDecode, &again);
    expect_identical(fill_and_decode(*ckpt, placement(mode, 1)), again, "refilled");
  }
}

TEST(FillRandom, BeyondTheContextIsAClearError) {
  const auto ckpt = tiny_model();
  auto device = make_cpu_device({2, 0});
  EngineOptions eo;
  eo.context = kContext;
  eo.kv = placement(OffloadMode::All, 1);
  Engine engine(*ckpt, *device, eo);
  try {
    engine.fill_random_context(kContext + 1, kSeed);
    FAIL() << "a fill past the context must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("raise --ctx"), std::string::npos) << e.what();
  }
  EXPECT_EQ(engine.n_past(), 0);
  EXPECT_THROW(engine.fill_random_context(-1, kSeed), Error);
  // Full is fine; then one more decode does not fit.
  engine.fill_random_context(kContext, kSeed);
  EXPECT_THROW(engine.decode(3), Error);

  auto simple = make_simple_kv_cache(*device, ckpt->config(), 64);
  EXPECT_THROW(simple->fill_random(65, kSeed), Error);
}

}  // namespace
}  // namespace headinfer
