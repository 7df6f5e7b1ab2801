// Sliding-window layers keep only their window (issue 14): on the window models (gemma2 and
// gemma3_text from tests/data/families, the shared mistral_swa), with the 1500-token prompt of
// their ref.json (longer than every window, 48), every placement of the window-trimmed cache gives
// logits bit-identical to the all-resident run that keeps the whole context in every layer
// (window_kv off, what the store did before), and the greedy ids of transformers' reference.
//
// Chunks of 7 and 97: the trimmed resident blocks (2 (W - 1) + C rows: 101 and 191 of the 1570
// positions) slide many times in the prefill and several times in the 70 decode steps; the host
// tier keeps rings of slabs (slabs of 16 positions: rings of 5 and 11 slabs, where the context
// has 99). Hybrid decode attends CPU groups on the host from the ring's slabs as pages: that
// differs from the device's attention by fp32 rounding (hybrid_test.cpp), so its reference is
// the same hybrid placement keeping the whole context, bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "headinfer/checkpoint.h"
#include "headinfer/error.h"
#include "headinfer/head_store.h"
#include "headinfer/model.h"
#include "model_set.h"
#include "placement_run.h"
#include "testdata.h"

namespace headinfer {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kDecode = 70;

struct WindowModel {
  fs::path dir;
  std::vector<int32_t> prompt;  // the 1500-token case of ref.json
  std::vector<int32_t> greedy;  // transformers' greedy ids after it (f32)
};

std::vector<WindowModel> window_models() {
  const fs::path families = fs::path(HEADINFER_SOURCE_DIR) / "tests" / "data" / "families";
  std::vector<WindowModel> out;
  for (const fs::path& dir : {families / "gemma2-f32", families / "gemma3-f32",
                              test::testdata_dir() / "models" / "tiny" / "mistral_swa-f32"}) {
    std::ifstream in(dir / "ref.json");
    const nlohmann::json ref = nlohmann::json::parse(in);
    const nlohmann::json& c = ref["cases"][2];
    out.push_back({dir, c["prompt_ids"].get<std::vector<int32_t>>(), c["greedy_f32"].get<std::vector<int32_t>>()});
  }
  return out;
}

// Bytes on the device before any KV: weights, activations, tables.
int64_t fixed_device_bytes(const Checkpoint& ckpt, int64_t context, int64_t chunk) {
  auto device = make_cpu_device({1, 0});
  Model model(ckpt, *device, {std::min(chunk, context), 512});
  return static_cast<int64_t>(device->bytes_in_use());
}

// The plan trims every window layer (and only those) to fewer positions than the context.
void expect_trimmed(const ModelConfig& c, const Plan& p, const std::string& what) {
  ASSERT_EQ(static_cast<int64_t>(p.layers.size()), c.n_layers) << what;
  int64_t n_window = 0;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerKv& k = p.layers[static_cast<size_t>(l)];
    EXPECT_EQ(k.window, c.window(l)) << what << " layer " << l;
    if (c.window(l) > 0) {
      ++n_window;
      EXPECT_EQ(k.device_rows, 2 * (c.window(l) - 1) + p.chunk) << what << " layer " << l;
      EXPECT_LT(k.device_rows, p.context) << what << " layer " << l;
    } else {
      EXPECT_EQ(k.device_rows, p.context) << what << " layer " << l;
    }
  }
  EXPECT_EQ(p.n_window_layers, n_window) << what;
  EXPECT_GT(n_window, 0) << what;
}

class WindowKv : public ::testing::TestWithParam<int64_t> {};

TEST_P(WindowKv, EveryPlacementEqualsTheWholeContextRun) {
  HEADINFER_REQUIRE_TESTDATA();
  const int64_t chunk = GetParam();
  for (const WindowModel& m : window_models()) {
    SCOPED_TRACE(m.dir.filename().string() + " chunk " + std::to_string(chunk));
    auto ckpt = Checkpoint::open(m.dir);
    const ModelConfig& c = ckpt->config();
    const int64_t context = static_cast<int64_t>(m.prompt.size()) + kDecode;

    KvPlacementOptions whole;
    whole.offload = OffloadMode::None;
    whole.window_kv = false;
    const test::PlacementRun ref = test::run_placement(*ckpt, m.prompt, chunk, kDecode, whole);
    EXPECT_EQ(ref.plan.n_window_layers, 0);
    EXPECT_EQ(ref.plan.window_saved_bytes, 0);
    // transformers' greedy continuation (16 ids) is the start of ours.
    ASSERT_GE(ref.tokens.size(), m.greedy.size());
    EXPECT_EQ(std::vector<int32_t>(ref.tokens.begin(), ref.tokens.begin() + static_cast<std::ptrdiff_t>(m.greedy.size())),
              m.greedy);

    // All resident: the trimmed blocks hold far less.
    KvPlacementOptions resident;
    resident.offload = OffloadMode::None;
    const test::PlacementRun all_resident = test::run_placement(*ckpt, m.prompt, chunk, kDecode, resident);
    expect_trimmed(c, all_resident.plan, "all resident");
    test::expect_bit_identical(ref, all_resident, "all resident, window layers trimmed");
    EXPECT_LT(all_resident.plan.kv_bytes_gpu, ref.plan.kv_bytes_gpu);
    EXPECT_EQ(all_resident.plan.window_saved_bytes, ref.plan.kv_bytes_gpu - all_resident.plan.kv_bytes_gpu);
    EXPECT_LT(all_resident.device_peak, ref.device_peak);

    // Every group on the host: rings of 16-position slabs (G 1, late copies), and the default slab
    // size (one slab holds the whole context: no ring, the window travels alone).
    for (auto [group, slab] : {std::pair<int64_t, int64_t>{1, 16}, {c.n_kv_heads, 0}}) {
      KvPlacementOptions o;
      o.offload = OffloadMode::All;
      o.kv_group = group;
      o.host_slab_positions = slab;
      o.copy_jitter_us = group == 1 ? 20 : 0;
      const test::PlacementRun got = test::run_placement(*ckpt, m.prompt, chunk, kDecode, o);
      const std::string what = "offload all, G " + std::to_string(group) + ", slabs of " + std::to_string(slab);
      expect_trimmed(c, got.plan, what);
      if (slab > 0) {
        for (const LayerKv& k : got.plan.layers) {
          if (k.window > 0) {
            EXPECT_EQ(k.host_slabs, (k.window - 1 + chunk + slab - 1) / slab + 1) << what;
          }
        }
        EXPECT_LT(got.plan.kv_bytes_host, ref.plan.kv_bytes_gpu) << what;
        EXPECT_EQ(got.plan.window_saved_bytes, ref.plan.kv_bytes_gpu - got.plan.kv_bytes_host) << what;
      }
      test::expect_bit_identical(ref, got, what);
    }

    // Some resident (full-context groups first), the rest streamed from rings.
    const int64_t fixed = fixed_device_bytes(*ckpt, context, chunk);
    const int64_t n_groups = c.n_layers * c.n_kv_heads;
    KvPlacementOptions split;
    split.offload = OffloadMode::Auto;
    split.kv_group = 1;
    split.host_slab_positions = 16;
    for (auto [r, cap] : test::resident_caps(c, fixed, context, chunk, {1, n_groups / 2, n_groups - 2}, split)) {
      KvPlacementOptions o = split;
      o.gpu_mem = cap;
      const test::PlacementRun got = test::run_placement(*ckpt, m.prompt, chunk, kDecode, o);
      const std::string what = "offload auto, " + std::to_string(r) + " resident";
      EXPECT_EQ(got.plan.n_resident_groups, r) << what;
      expect_trimmed(c, got.plan, what);
      test::expect_bit_identical(ref, got, what);
    }

    // Hybrid decode: half the host-tier groups attended on the CPU from the rings' slabs.
    KvPlacementOptions hybrid;
    hybrid.offload = OffloadMode::All;
    hybrid.kv_group = 1;
    hybrid.host_slab_positions = 16;
    hybrid.hybrid = HybridMode::Auto;
    hybrid.cpu_groups = n_groups / 2;
    hybrid.host_threads = 2;
    KvPlacementOptions hybrid_whole = hybrid;
    hybrid_whole.window_kv = false;
    const test::PlacementRun hw = test::run_placement(*ckpt, m.prompt, chunk, kDecode, hybrid_whole);
    const test::PlacementRun ht = test::run_placement(*ckpt, m.prompt, chunk, kDecode, hybrid);
    EXPECT_EQ(ht.plan.n_cpu_groups, n_groups / 2);
    expect_trimmed(c, ht.plan, "hybrid");
    test::expect_bit_identical(hw, ht, "hybrid, window layers trimmed");
    EXPECT_EQ(ht.tokens, ref.tokens) << "hybrid greedy ids";
  }
}

INSTANTIATE_TEST_SUITE_P(Chunks, WindowKv, ::testing::Values(7, 97),
                         [](const auto& info) { return "chunk" + std::to_string(info.param); });

// A prefill chunk longer than the planned one cannot fit a trimmed block: a clear error, not a
// wrong answer.
TEST(WindowKvErrors, ChunkLongerThanPlannedIsRefused) {
  auto ckpt = Checkpoint::open(fs::path(HEADINFER_SOURCE_DIR) / "tests" / "data" / "families" / "gemma2-f32");
  const ModelConfig& c = ckpt->config();
  auto device = make_cpu_device({1, 0});
  Model model(*ckpt, *device, {64, 64});
  KvPlacementOptions kv;
  kv.offload = OffloadMode::None;
  auto cache = make_planned_kv_cache(*device, c, 1000, 8, static_cast<int64_t>(model.weight_bytes()), kv);
  ASSERT_GT(kv_cache_plan(*cache)->n_window_layers, 0);
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  const std::vector<int32_t> ids = test::random_prompt(64, c.vocab_size, 3);
  try {
    model.forward(ids, 0, *cache, logits);
    FAIL() << "a 64-token chunk went into blocks planned for 8";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("chunks of at most 8"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace headinfer
