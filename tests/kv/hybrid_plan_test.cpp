// The hybrid split in the Planner (which host-tier groups the CPU attends in decode) against
// hand-computed numbers, and the bandwidth cache file.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include "headinfer/bandwidth.h"
#include "headinfer/error.h"
#include "headinfer/planner.h"

namespace headinfer {
namespace {

// Llama-3-8B's attention shape: 32 layers x 8 kv heads x 128, bf16 KV.
ModelConfig llama3_8b() {
  ModelConfig c;
  c.model_type = "llama";
  c.hidden_size = 4096;
  c.n_layers = 32;
  c.n_heads = 32;
  c.n_kv_heads = 8;
  c.head_dim = 128;
  c.intermediate_size = 14336;
  c.vocab_size = 128256;
  c.max_position_embeddings = 131072;
  c.layer_window.assign(32, 0);
  return c;
}

PlannerInput hybrid_input() {
  PlannerInput in;
  in.config = llama3_8b();
  in.context = 131072;
  in.gpu_mem = int64_t{24} << 30;
  in.kv_group = 1;
  in.link_gbps = 54.0;
  in.dram_gbps = 86.0;
  in.hybrid = HybridMode::Auto;
  return in;
}

TEST(HybridPlan, BalancesCpuAndLinkTime) {
  const Plan p = make_plan(hybrid_input());
  ASSERT_TRUE(p.fits) << p.message;
  const int64_t S = p.n_streamed_groups;
  ASSERT_GT(S, 0);
  // Hand: the CPU takes k of S groups when k / 86 = (S - k) / 54 (row write-backs aside), so
  // k = S * 86 / 140 = 0.614 S; the planner's integer k is within one group of it.
  const double k_exact = static_cast<double>(S) * 86.0 / 140.0;
  EXPECT_NEAR(static_cast<double>(p.n_cpu_groups), k_exact, 1.0);
  // Both parts then take about the same time, and the plan is faster than streaming alone by
  // about 54 / 140 = 0.39x.
  EXPECT_NEAR(p.cpu_seconds_per_token / p.link_seconds_per_token, 1.0, 0.02);
  EXPECT_NEAR(p.decode_seconds_per_token / p.streaming_seconds_per_token, 54.0 / 140.0, 0.01);
  EXPECT_EQ(p.cpu_bytes_per_token, p.n_cpu_groups * p.group_block_bytes);
  // Only host-tier groups are CPU-attended, and every layer gets some.
  int64_t n = 0;
  for (int64_t l = 0; l < p.n_groups / p.groups_per_layer; ++l) {
    int64_t in_layer = 0;
    for (int64_t g = 0; g < p.groups_per_layer; ++g) {
      if (p.is_cpu_attended(l, g)) {
        EXPECT_FALSE(p.is_resident(l, g));
        ++in_layer;
      }
    }
    EXPECT_GT(in_layer, 0) << "layer " << l;
    n += in_layer;
  }
  EXPECT_EQ(n, p.n_cpu_groups);
}

TEST(HybridPlan, OffForcedAndErrors) {
  PlannerInput in = hybrid_input();
  in.hybrid = HybridMode::Off;
  const Plan off = make_plan(in);
  EXPECT_EQ(off.n_cpu_groups, 0);
  EXPECT_DOUBLE_EQ(off.decode_seconds_per_token, off.streaming_seconds_per_token);

  in.hybrid = HybridMode::Auto;
  in.cpu_groups = 5;
  EXPECT_EQ(make_plan(in).n_cpu_groups, 5);
  in.cpu_groups = off.n_streamed_groups + 1;
  EXPECT_THROW(make_plan(in), Error);

  in.cpu_groups = -1;
  in.dram_gbps = 0.0;
  EXPECT_THROW(make_plan(in), Error);  // balancing needs both bandwidths

  EXPECT_EQ(parse_hybrid_mode("auto", "--hybrid"), HybridMode::Auto);
  EXPECT_EQ(parse_hybrid_mode("off", "--hybrid"), HybridMode::Off);
  EXPECT_THROW(parse_hybrid_mode("on", "--hybrid"), Error);
}

// A faster host takes more groups; a host slower than the link still takes some (they add up).
TEST(HybridPlan, SplitFollowsTheBandwidths) {
  PlannerInput in = hybrid_input();
  in.dram_gbps = 20.0;
  const Plan slow = make_plan(in);
  in.dram_gbps = 200.0;
  const Plan fast = make_plan(in);
  EXPECT_GT(slow.n_cpu_groups, 0);
  EXPECT_LT(slow.n_cpu_groups, fast.n_cpu_groups);
  EXPECT_LT(fast.n_cpu_groups, fast.n_streamed_groups);
}

TEST(BandwidthCache, MeasuresOnceThenReads) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("headinfer-bw-test-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  int calls = 0;
  const CachedValue first = cached_bandwidth(dir, "link: test", [&] { ++calls; return 12.5; });
  EXPECT_DOUBLE_EQ(first.gbps, 12.5);
  EXPECT_NE(first.source.find("measured"), std::string::npos);
  const CachedValue again = cached_bandwidth(dir, "link: test", [&] { ++calls; return 99.0; });
  EXPECT_DOUBLE_EQ(again.gbps, 12.5);
  EXPECT_NE(again.source.find("cached"), std::string::npos);
  EXPECT_EQ(calls, 1);
  // A second key lands in the same file; a broken file is measured over, not an error.
  EXPECT_DOUBLE_EQ(cached_bandwidth(dir, "other", [] { return 3.0; }).gbps, 3.0);
  EXPECT_DOUBLE_EQ(cached_bandwidth(dir, "link: test", [] { return 1.0; }).gbps, 12.5);
  std::ofstream(dir / "bandwidth.json") << "{ not json";
  EXPECT_DOUBLE_EQ(cached_bandwidth(dir, "link: test", [] { return 7.0; }).gbps, 7.0);
  EXPECT_DOUBLE_EQ(cached_bandwidth(dir, "link: test", [] { return 8.0; }).gbps, 7.0);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace headinfer
