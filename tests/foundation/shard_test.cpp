// Tensor parallelism by kv head on the CPU backend (issue 16): N simulated devices in one process,
// one thread each (ShardedModel), against the one-device Model on every tiny f32 model the layer
// types allow (every shared tiny model, stories260k and the repo's gemma2/gemma3/phi3/mistral-nemo).
//
// Tolerance. A shard computes q/k/v, attention, norms and the MLP activations of its heads and
// ffn rows with the same per-element arithmetic as one device (a row's dot product over hidden does
// not depend on which other rows are computed beside it), so the runs differ only in o_proj and
// down_proj: one device sums K products (K = q_dim or ffn) in one fp32 reduction, N shards sum
// K / N products each and the host all-reduce adds the N partials in rank order. Both are fp32
// sums of the same products in different association, each within gamma_K * sum|terms| of the
// exact sum (gamma_K ~ K u worst case, ~sqrt(K) u in practice, u = 2^-24): with K <= 176 that is
// <= 1.1e-5 of sum|terms| worst case and ~8e-7 typically, per projection, then carried through
// later layers by norms of gain ~1 and a residual stream that only adds. This is a strict subset
// of the reorderings between our forward and transformers' (model_test.cpp: attention over up to
// 1500 keys as well), bounded there by 1e-5 * max|logit| per step; we use the same bound here
// and print the measured worst. N = 1 runs the same ops in the same order (the all-reduce hands
// the partial back unchanged), so its logits must be bit-identical.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "headinfer/engine.h"
#include "headinfer/error.h"
#include "headinfer/head_store.h"
#include "headinfer/planner.h"
#include "headinfer/random_model.h"
#include "headinfer/sharded_model.h"
#include "cpu_devices.h"
#include "model_set.h"
#include "placement_run.h"

namespace headinfer {
namespace {

namespace fs = std::filesystem;

constexpr float kLogitRtol = 1e-5f;
constexpr int64_t kPrompt = 61;  // longer than the families' sliding windows (48)
constexpr int64_t kChunk = 16;   // a prefill of 4 chunks, the last one short
constexpr int64_t kDecode = 8;

// The engine's loop (test::run_placement_on) on N shards: the prompt in chunks, then greedy steps.
test::PlacementRun run_sharded(const Checkpoint& ckpt, const std::vector<int32_t>& prompt, int n_shards,
                               const KvPlacementOptions& kv) {
  const ModelConfig& c = ckpt.config();
  const int64_t context = static_cast<int64_t>(prompt.size()) + kDecode;
  test::CpuDevices devices(n_shards);
  test::PlacementRun out;
  ShardedModel model(ckpt, devices.ptrs, {std::min(kChunk, context), 512});
  std::vector<std::unique_ptr<KvCache>> caches;
  std::vector<KvCache*> cache_ptrs;
  for (int r = 0; r < n_shards; ++r) {
    Model& shard = model.shard(r);
    caches.push_back(make_planned_kv_cache(shard.device(), shard.config(), context, kChunk,
                                           static_cast<int64_t>(shard.weight_bytes()), kv));
    cache_ptrs.push_back(caches.back().get());
  }
  out.plan = *kv_cache_plan(*caches[0]);
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  auto keep = [&] {
    out.logits.insert(out.logits.end(), logits.begin(), logits.end());
    out.tokens.push_back(static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
  };
  const auto n_prompt = static_cast<int64_t>(prompt.size());
  int64_t pos = 0;
  for (; pos < n_prompt; pos += kChunk) {
    const int64_t n = std::min(kChunk, n_prompt - pos);
    model.forward(std::span<const int32_t>(prompt).subspan(static_cast<size_t>(pos), static_cast<size_t>(n)), pos,
                  cache_ptrs, logits, n_prompt);
  }
  pos = n_prompt;
  keep();
  for (int64_t i = 0; i < kDecode; ++i, ++pos) {
    const int32_t id = out.tokens.back();
    model.forward(std::span<const int32_t>(&id, 1), pos, cache_ptrs, logits);
    keep();
  }
  return out;
}

// Shard counts to run: 1, 2 and the kv heads themselves (the largest divisor), those that divide.
std::vector<int> shard_counts(const ModelConfig& c) {
  std::vector<int> out;
  for (int64_t n : {int64_t{1}, int64_t{2}, c.n_kv_heads})
    if (c.n_kv_heads % n == 0 && std::find(out.begin(), out.end(), n) == out.end()) out.push_back(static_cast<int>(n));
  return out;
}

// max over steps of max|a - b| / max|b|
float worst_relative(const std::vector<float>& a, const std::vector<float>& b, int64_t vocab) {
  float worst = 0.0f;
  for (size_t s = 0; s + static_cast<size_t>(vocab) <= b.size(); s += static_cast<size_t>(vocab)) {
    float scale = 0.0f, err = 0.0f;
    for (size_t i = s; i < s + static_cast<size_t>(vocab); ++i) {
      scale = std::max(scale, std::fabs(b[i]));
      err = std::max(err, std::fabs(a[i] - b[i]));
    }
    worst = std::max(worst, err / scale);
  }
  return worst;
}

void expect_like_one_device(const fs::path& dir, const KvPlacementOptions& kv) {
  auto ckpt = Checkpoint::open(dir);
  const ModelConfig& c = ckpt->config();
  const std::vector<int32_t> prompt = test::random_prompt(kPrompt, c.vocab_size, 1601);
  KvPlacementOptions one_kv = kv;
  one_kv.offload = OffloadMode::None;
  const test::PlacementRun one = test::run_placement(*ckpt, prompt, kChunk, kDecode, one_kv);
  const std::string name = dir.filename().string();
  for (int n : shard_counts(c)) {
    SCOPED_TRACE(name + " on " + std::to_string(n) + " devices");
    const test::PlacementRun sharded = run_sharded(*ckpt, prompt, n, kv);
    EXPECT_EQ(sharded.tokens, one.tokens);
    ASSERT_EQ(sharded.logits.size(), one.logits.size());
    if (n == 1) {
      EXPECT_EQ(std::memcmp(sharded.logits.data(), one.logits.data(), one.logits.size() * sizeof(float)), 0)
          << "one shard must give the one-device logits bit for bit";
    }
    const float worst = worst_relative(sharded.logits, one.logits, c.vocab_size);
    EXPECT_LE(worst, kLogitRtol);
    std::printf("%s, %d devices: largest logit difference %.3g of max|logit| (allowed %.0e)\n", name.c_str(), n,
                worst, kLogitRtol);
  }
}

TEST(Shard, EveryModelOnNDevicesMatchesOneDevice) {
  HEADINFER_REQUIRE_TESTDATA();
  KvPlacementOptions kv;
  kv.offload = OffloadMode::None;
  for (const fs::path& dir : test::all_models()) {
    if (!dir.filename().string().ends_with("-f32") && dir.filename() != "stories260k") continue;
    expect_like_one_device(dir, kv);
  }
}

// bf16 checkpoints: the CPU widens every weight to fp32 before its product and keeps activations
// in fp32, so the split reassociates the same fp32 sums and the same bound holds.
TEST(Shard, Bf16CheckpointsOnNDevicesMatchOneDevice) {
  HEADINFER_REQUIRE_TESTDATA();
  KvPlacementOptions kv;
  kv.offload = OffloadMode::None;
  for (const fs::path& dir : test::all_models())
    if (dir.filename().string().ends_with("-f32") && dir.parent_path().filename() == "tiny") {
      const std::string name = dir.filename().string();
      expect_like_one_device(dir.parent_path() / (name.substr(0, name.size() - 4) + "-bf16"), kv);
    }
}

// No shared model has o_proj / MLP biases (added on rank 0 only) or an ffn that the devices do not
// divide: a random llama with attention_bias and mlp_bias, 4 kv heads and 175 ffn rows (43/44 per
// device on 4). The planner's per-shard weight estimate counts those biases where they live.
TEST(Shard, BiasesAndUnevenFfnOnNDevicesMatchOneDevice) {
  const fs::path dir = fs::temp_directory_path() / ("headinfer-shard-bias-" + std::to_string(::getpid()));
  nlohmann::json config = builtin_shape_config("tiny");
  config["num_attention_heads"] = 8;
  config["num_key_value_heads"] = 4;
  config["intermediate_size"] = 175;
  config["attention_bias"] = true;
  config["mlp_bias"] = true;
  write_random_checkpoint(dir, config, DType::F32, 16);
  auto ckpt = Checkpoint::open(dir);
  ASSERT_TRUE(ckpt->config().o_bias && ckpt->config().mlp_bias);
  KvPlacementOptions kv;
  kv.offload = OffloadMode::None;
  expect_like_one_device(dir, kv);
  for (int n : {2, 4}) {
    test::CpuDevices devices(n);
    ShardedModel model(*ckpt, devices.ptrs, {16, 16});
    for (int r = 0; r < n; ++r)
      EXPECT_EQ(estimate_shard_weight_bytes(ckpt->config(), r, n, 4),
                static_cast<int64_t>(model.shard(r).weight_bytes()))
          << r << " of " << n;
  }
  fs::remove_all(dir);
}

// Each shard plans its own heads; with every head block on the host tier, streamed through the
// ring one kv head at a time, the logits are those of the all-resident shards (and so within the
// tolerance of one device).
TEST(Shard, OffloadedShardsMatchOneDevice) {
  HEADINFER_REQUIRE_TESTDATA();
  KvPlacementOptions kv;
  kv.offload = OffloadMode::All;
  kv.kv_group = 1;
  for (const char* name : {"llama2-f32", "mistral_swa-f32"})
    expect_like_one_device(test::testdata_dir() / "models" / "tiny" / name, kv);
  expect_like_one_device(test::family_models().front(), kv);
}

TEST(Shard, OffloadedShardsAreBitIdenticalToResidentShards) {
  HEADINFER_REQUIRE_TESTDATA();
  auto ckpt = Checkpoint::open(test::testdata_dir() / "models" / "tiny" / "llama2-f32");
  const std::vector<int32_t> prompt = test::random_prompt(kPrompt, ckpt->config().vocab_size, 7);
  KvPlacementOptions resident;
  resident.offload = OffloadMode::None;
  KvPlacementOptions streamed;
  streamed.offload = OffloadMode::All;
  streamed.kv_group = 1;
  const test::PlacementRun a = run_sharded(*ckpt, prompt, 2, resident);
  const test::PlacementRun b = run_sharded(*ckpt, prompt, 2, streamed);
  EXPECT_GT(b.plan.n_streamed_groups, 0);
  EXPECT_EQ(b.tokens, a.tokens);
  ASSERT_EQ(a.logits.size(), b.logits.size());
  EXPECT_EQ(std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * sizeof(float)), 0);
}

std::vector<float> copy(std::span<const float> s) { return {s.begin(), s.end()}; }

// The Engine over 2 devices: generate as one device does; a KV snapshot of the split engine loads
// onto one device and back (ShardedKvCache numbers heads as the model does), and prefix reuse cuts
// every shard's cache.
TEST(Shard, EngineOnTwoDevicesGeneratesSnapshotsAndReusesPrefixes) {
  HEADINFER_REQUIRE_TESTDATA();
  auto ckpt = Checkpoint::open(test::testdata_dir() / "models" / "tiny" / "mistral_swa-f32");
  const ModelConfig& c = ckpt->config();
  const std::vector<int32_t> prompt = test::random_prompt(kPrompt, c.vocab_size, 16);
  auto d0 = make_cpu_device({1, 0}), d1 = make_cpu_device({1, 0}), d2 = make_cpu_device({1, 0});
  Device* two[] = {d0.get(), d1.get()};
  EngineOptions eo;
  eo.context = 128;
  eo.chunk = kChunk;
  Engine split(*ckpt, two, eo);
  Engine one(*ckpt, *d2, eo);
  EXPECT_EQ(split.n_devices(), 2);
  EXPECT_EQ(split.config().n_kv_heads, c.n_kv_heads);
  GenerateOptions go;
  go.max_new_tokens = kDecode;
  go.ignore_eos = true;
  std::vector<float> split_logits, one_logits;
  GenerateCallbacks cb_split, cb_one;
  cb_split.on_logits = [&](std::span<const float> l) { split_logits.insert(split_logits.end(), l.begin(), l.end()); };
  cb_one.on_logits = [&](std::span<const float> l) { one_logits.insert(one_logits.end(), l.begin(), l.end()); };
  const GenerateResult rs = generate(split, prompt, go, cb_split);
  const GenerateResult ro = generate(one, prompt, go, cb_one);
  EXPECT_EQ(rs.tokens, ro.tokens);
  EXPECT_LE(worst_relative(split_logits, one_logits, c.vocab_size), kLogitRtol);

  // Snapshots: split -> one device, and one device -> a fresh split engine.
  const fs::path dir = fs::temp_directory_path() / ("headinfer-shard-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  split.save_kv(dir / "split.hikv");
  one.save_kv(dir / "one.hikv");
  const int32_t next = rs.tokens.back();
  const std::vector<float> split_next = copy(split.decode(next));
  const std::vector<float> one_next = copy(one.decode(next));
  {
    auto d3 = make_cpu_device({1, 0});
    Engine loaded(*ckpt, *d3, eo);
    loaded.load_kv(dir / "split.hikv");
    // The split run's KV on one device: this step differs from the split one's by the
    // reassociated sums only.
    EXPECT_LE(worst_relative(copy(loaded.decode(next)), split_next, c.vocab_size), kLogitRtol);
  }
  {
    auto d3 = make_cpu_device({1, 0}), d4 = make_cpu_device({1, 0});
    Device* fresh[] = {d3.get(), d4.get()};
    Engine loaded(*ckpt, fresh, eo);
    loaded.load_kv(dir / "split.hikv");
    const std::vector<float> again = copy(loaded.decode(next));
    EXPECT_EQ(again, split_next);  // its own KV back: bit for bit
    loaded.load_kv(dir / "one.hikv");
    EXPECT_LE(worst_relative(copy(loaded.decode(next)), one_next, c.vocab_size), kLogitRtol);
  }
  fs::remove_all(dir);

  // Prefix reuse: the same prompt with a new tail keeps the common prefix on both shards, and the
  // logits are those of a fresh split run of the whole prompt.
  std::vector<int32_t> longer(prompt.begin(), prompt.begin() + 50);
  for (int32_t id : test::random_prompt(9, c.vocab_size, 99)) longer.push_back(id);
  GenerateOptions reuse = go;
  reuse.reuse_prefix = true;
  reuse.max_new_tokens = 3;
  std::vector<float> reused_logits, fresh_logits;
  GenerateCallbacks cb_reused, cb_fresh;
  cb_reused.on_logits = [&](std::span<const float> l) { reused_logits.insert(reused_logits.end(), l.begin(), l.end()); };
  cb_fresh.on_logits = [&](std::span<const float> l) { fresh_logits.insert(fresh_logits.end(), l.begin(), l.end()); };
  const GenerateResult rr = generate(split, longer, reuse, cb_reused);
  EXPECT_EQ(rr.reused_tokens, 50);
  split.reset();
  generate(split, longer, reuse, cb_fresh);
  EXPECT_EQ(reused_logits, fresh_logits);
}

// A shard that fails (here: its cache is too small) must not leave the others waiting in the
// all-reduce: forward rethrows that shard's own error, and the model runs again afterwards.
TEST(Shard, AFailingShardStopsTheOthersAndItsErrorIsRethrown) {
  HEADINFER_REQUIRE_TESTDATA();
  auto ckpt = Checkpoint::open(test::testdata_dir() / "models" / "tiny" / "llama3-f32");
  const ModelConfig& c = ckpt->config();
  auto d0 = make_cpu_device({1, 0}), d1 = make_cpu_device({1, 0});
  Device* devices[] = {d0.get(), d1.get()};
  ShardedModel model(*ckpt, devices, {16, 16});
  auto good0 = make_simple_kv_cache(*d0, model.shard(0).config(), 32);
  auto small1 = make_simple_kv_cache(*d1, model.shard(1).config(), 4);
  auto good1 = make_simple_kv_cache(*d1, model.shard(1).config(), 32);
  const std::vector<int32_t> ids = test::random_prompt(9, c.vocab_size, 3);
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  KvCache* failing[] = {good0.get(), small1.get()};
  try {
    model.forward(ids, 0, failing, logits);
    FAIL() << "shard 1's cache holds 4 positions, 9 were fed";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("context full: 9 positions needed", 0), 0u) << e.what();
  }
  good0->reset();
  KvCache* working[] = {good0.get(), good1.get()};
  model.forward(ids, 0, working, logits);
  const test::PlacementRun one = [&] {
    KvPlacementOptions kv;
    kv.offload = OffloadMode::None;
    return test::run_placement(*ckpt, ids, 16, 0, kv);
  }();
  EXPECT_LE(worst_relative(logits, one.logits, c.vocab_size), kLogitRtol);
}

TEST(Shard, ShardConfigSplitsHeadsAndFfn) {
  ModelConfig c;
  c.n_heads = 32;
  c.n_kv_heads = 8;
  c.head_dim = 128;
  c.intermediate_size = 14337;  // odd: the shards' ffn rows differ by one
  int64_t ffn_total = 0, next_ffn = 0;
  for (int r = 0; r < 4; ++r) {
    const ShardSlice s = shard_slice(c, r, 4);
    EXPECT_EQ(s.kv_head0, 2 * r);
    EXPECT_EQ(s.n_kv_heads, 2);
    EXPECT_EQ(s.ffn0, next_ffn);
    next_ffn = s.ffn0 + s.n_ffn;
    ffn_total += s.n_ffn;
    const ModelConfig sc = shard_config(c, r, 4);
    EXPECT_EQ(sc.n_heads, 8);
    EXPECT_EQ(sc.n_kv_heads, 2);
    EXPECT_EQ(sc.intermediate_size, s.n_ffn);
    EXPECT_EQ(sc.group_size(), c.group_size());
  }
  EXPECT_EQ(ffn_total, c.intermediate_size);
}

TEST(Shard, DevicesThatDoNotDivideTheKvHeadsAreAnError) {
  ModelConfig c;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.intermediate_size = 176;
  try {
    shard_config(c, 0, 3);
    FAIL() << "3 devices for 2 kv heads must not split";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2 kv heads over 3 devices"), std::string::npos) << e.what();
  }
  HEADINFER_REQUIRE_TESTDATA();
  auto ckpt = Checkpoint::open(test::testdata_dir() / "models" / "tiny" / "llama3-f32");
  auto d0 = make_cpu_device({1, 0}), d1 = make_cpu_device({1, 0}), d2 = make_cpu_device({1, 0});
  Device* devices[] = {d0.get(), d1.get(), d2.get()};
  EXPECT_THROW(ShardedModel(*ckpt, devices, {16, 16}), Error);
}

TEST(HostAllReduce, SumsInRankOrderOnEveryRank) {
  constexpr int kRanks = 3;
  constexpr int64_t kRows = 5, kCols = 17, kStride = 19;  // a row slice of a wider buffer
  auto reduce = make_host_all_reduce(kRanks);
  std::vector<std::unique_ptr<Device>> devices;
  std::vector<std::vector<float>> bufs(kRanks, std::vector<float>(kRows * kStride));
  for (int r = 0; r < kRanks; ++r) {
    devices.push_back(make_cpu_device({1, 0}));
    // Magnitudes far apart, so another association of the three gives other bits.
    for (size_t i = 0; i < bufs[r].size(); ++i)
      bufs[r][i] = static_cast<float>(std::sin(0.37 * static_cast<double>(i) + r)) * (r == 0 ? 1e8f : r == 1 ? -1e8f : 3.14159f);
  }
  const std::vector<std::vector<float>> in = bufs;
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < kRanks; ++r)
      threads.emplace_back([&, r] {
        reduce->sum(r, *devices[r], MatView{bufs[r].data(), DType::F32, kRows, kCols, kStride});
      });
  }
  for (int64_t i = 0; i < kRows; ++i)
    for (int64_t j = 0; j < kStride; ++j) {
      const size_t k = static_cast<size_t>(i * kStride + j);
      const float want = j < kCols ? (in[0][k] + in[1][k]) + in[2][k] : in[0][k];
      EXPECT_EQ(bufs[0][k], want) << i << "," << j;
      for (int r = 1; r < kRanks; ++r) EXPECT_EQ(bufs[r][k], j < kCols ? want : in[r][k]);  // padding untouched
    }
}

TEST(HostAllReduce, AbortReleasesWaitingRanks) {
  auto reduce = make_host_all_reduce(2);
  auto device = make_cpu_device({1, 0});
  std::vector<float> x(4, 1.0f);
  std::jthread waiter([&] {
    EXPECT_THROW(reduce->sum(0, *device, MatView{x.data(), DType::F32, 1, 4, 4}), Error);
  });
  reduce->abort();
  waiter.join();
  reduce->reset();
  std::vector<float> y(4, 2.0f);
  {
    std::jthread a([&] { reduce->sum(0, *device, MatView{x.data(), DType::F32, 1, 4, 4}); });
    std::jthread b([&] { reduce->sum(1, *device, MatView{y.data(), DType::F32, 1, 4, 4}); });
  }
  EXPECT_EQ(x[0], 3.0f);
  EXPECT_EQ(y[3], 3.0f);
}

}  // namespace
}  // namespace headinfer
