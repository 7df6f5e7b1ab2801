// Planner: hand-computed numbers, the fit/no-fit boundaries, every shared config, and the
// Llama-3-8B arithmetic of issue 4. Also the byte-size parser and the copy streams.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <numeric>
#include <vector>

#include "headinfer/options.h"
#include "headinfer/checkpoint.h"
#include "headinfer/error.h"
#include "headinfer/model.h"
#include "headinfer/planner.h"
#include "headinfer/random_model.h"
#include "headinfer/sharded_model.h"
#include "headinfer/transfer.h"
#include "cpu_devices.h"
#include "testdata.h"

namespace headinfer {
namespace {

namespace fs = std::filesystem;
constexpr int64_t GiB = int64_t{1} << 30;
constexpr int64_t TiB = int64_t{1} << 40;

// 2 layers x 4 kv heads x head_dim 8; context 100, F32 KV: one head block (K+V) is
// 2 * 100 * 8 * 4 = 6400 bytes, 8 blocks = 51200. Weights 10000 and activations 1000 given.
PlannerInput small_input() {
  PlannerInput in;
  in.config.model_type = "llama";
  in.config.hidden_size = 32;
  in.config.n_layers = 2;
  in.config.n_heads = 8;
  in.config.n_kv_heads = 4;
  in.config.head_dim = 8;
  in.config.intermediate_size = 64;
  in.config.vocab_size = 100;
  in.config.max_position_embeddings = 1000;
  in.config.layer_window = {0, 0};
  in.context = 100;
  in.kv_elem_bytes = 4;
  in.weight_bytes = 10000;
  in.activation_bytes = 1000;
  in.kv_group = 1;
  return in;
}

TEST(Planner, HandComputedNumbers) {
  PlannerInput in = small_input();
  in.offload = OffloadMode::All;
  in.link_gbps = 2.0;
  const Plan p = make_plan(in);
  ASSERT_TRUE(p.fits) << p.message;
  EXPECT_EQ(p.kv_bytes_per_token, 2 * 2 * 4 * 8 * 4);
  EXPECT_EQ(p.head_block_bytes, 6400);
  EXPECT_EQ(p.kv_bytes_total, 51200);
  EXPECT_EQ(p.kv_bytes_gpu, 0);
  EXPECT_EQ(p.kv_bytes_host, 51200);
  EXPECT_EQ(p.ring_depth, 2);
  EXPECT_EQ(p.ring_bytes, 2 * 6400);
  EXPECT_EQ(p.gpu_bytes_total, 10000 + 1000 + 12800);
  // Per decoded token: 8 blocks fetched, one K and V row of 8 floats written back for each.
  EXPECT_EQ(p.link_bytes_per_token, 8 * (6400 + 2 * 8 * 4));
  EXPECT_DOUBLE_EQ(p.decode_seconds_per_token, 8.0 * 6464 / 2e9);
}

TEST(Planner, NoneBoundary) {
  PlannerInput in = small_input();
  in.offload = OffloadMode::None;
  in.gpu_mem = 11000 + 51200;
  Plan p = make_plan(in);
  EXPECT_TRUE(p.fits) << p.message;
  EXPECT_EQ(p.gpu_bytes_total, in.gpu_mem);
  in.gpu_mem -= 1;
  p = make_plan(in);
  EXPECT_FALSE(p.fits);
  EXPECT_NE(p.message.find("--offload none"), std::string::npos) << p.message;
}

TEST(Planner, AutoUsesTheMemoryTheCapLeaves) {
  PlannerInput in = small_input();
  in.offload = OffloadMode::Auto;
  in.gpu_mem = 11000 + 51200;  // everything resident, no ring
  Plan p = make_plan(in);
  ASSERT_TRUE(p.fits);
  EXPECT_EQ(p.n_resident_groups, 8);
  EXPECT_EQ(p.ring_bytes, 0);
  // One byte less: 7 resident + a 1-slot ring is 51200 again, 6 + 2 slots too; 5 + 2 slots fit.
  in.gpu_mem -= 1;
  p = make_plan(in);
  ASSERT_TRUE(p.fits);
  EXPECT_EQ(p.n_resident_groups, 5);
  EXPECT_EQ(p.ring_depth, 2);
  EXPECT_EQ(p.gpu_bytes_total, 11000 + 7 * 6400);
  EXPECT_EQ(std::accumulate(p.resident.begin(), p.resident.end(), 0), 5);
  // Exactly 3 resident plus the ring.
  in.gpu_mem = 11000 + 5 * 6400;
  p = make_plan(in);
  EXPECT_EQ(p.n_resident_groups, 3);
  EXPECT_EQ(p.gpu_bytes_total, in.gpu_mem);
  EXPECT_EQ(p.kv_bytes_gpu + p.kv_bytes_host, p.kv_bytes_total);
}

TEST(Planner, RingBoundaryAndWeights) {
  PlannerInput in = small_input();
  in.offload = OffloadMode::All;
  in.gpu_mem = 11000 + 2 * 6400;
  EXPECT_TRUE(make_plan(in).fits);
  in.gpu_mem -= 1;
  Plan p = make_plan(in);
  EXPECT_FALSE(p.fits);
  EXPECT_NE(p.message.find("ring"), std::string::npos) << p.message;
  in.gpu_mem = 10500;  // above the weights, below weights + activations
  p = make_plan(in);
  EXPECT_FALSE(p.fits);
  EXPECT_NE(p.message.find("--chunk"), std::string::npos) << p.message;
  in.gpu_mem = 9999;  // below the weights
  p = make_plan(in);
  EXPECT_FALSE(p.fits);
  EXPECT_NE(p.message.find("weights alone need"), std::string::npos) << p.message;
}

TEST(Planner, HostBoundary) {
  PlannerInput in = small_input();
  in.offload = OffloadMode::All;
  in.host_mem = 51200;
  EXPECT_TRUE(make_plan(in).fits);
  in.host_mem = 51199;
  const Plan p = make_plan(in);
  EXPECT_FALSE(p.fits);
  EXPECT_NE(p.message.find("--host-mem"), std::string::npos) << p.message;
}

TEST(Planner, GroupSize) {
  PlannerInput in = small_input();
  in.offload = OffloadMode::All;
  in.kv_group = 2;
  Plan p = make_plan(in);
  EXPECT_EQ(p.groups_per_layer, 2);
  EXPECT_EQ(p.n_groups, 4);
  EXPECT_EQ(p.ring_bytes, 2 * 2 * 6400);
  in.kv_group = 3;
  EXPECT_THROW(make_plan(in), Error);
  // Picked: the largest divisor whose ring takes at most a quarter of the free memory.
  in.kv_group = 0;
  in.gpu_mem = 11000 + 4 * 2 * 2 * 6400;
  EXPECT_EQ(make_plan(in).group_size, 2);
}

TEST(Planner, Llama3_8B) {
  HEADINFER_REQUIRE_TESTDATA();
  const ModelConfig c = load_model_config(test::testdata_dir() / "configs" / "Meta-Llama-3-8B-Instruct");
  EXPECT_EQ(c.kv_bytes_per_token(2), 128 * 1024);
  PlannerInput in;
  in.config = c;
  in.kv_elem_bytes = 2;
  in.weight_elem_bytes = 2;
  in.gpu_mem = 24 * GiB;
  in.host_mem = TiB;
  in.context = int64_t{1} << 20;
  EXPECT_EQ(make_plan(in).kv_bytes_total, 128 * GiB);
  in.context = int64_t{4} << 20;
  Plan p = make_plan(in);
  EXPECT_EQ(p.kv_bytes_total, 512 * GiB);
  ASSERT_TRUE(p.fits) << p.message;
  EXPECT_LE(p.gpu_bytes_total, 24 * GiB);
  EXPECT_GT(p.n_resident_groups, 0);  // the memory the cap leaves holds heads, not only the ring
  EXPECT_EQ(p.kv_bytes_gpu + p.kv_bytes_host, p.kv_bytes_total);
  in.host_mem = 128 * GiB;
  p = make_plan(in);
  EXPECT_FALSE(p.fits);
  EXPECT_NE(p.message.find("host"), std::string::npos) << p.message;
}

// The prefill chunk the planner chooses (issue 11) on Llama-3-8B's real config: the whole context
// when it is short, kMaxAutoChunk when memory is plentiful, the largest that fits a tight cap, and
// under a cap where KV streams the largest whose activations keep to their share of the memory the
// weights leave. A given chunk is kept.
PlannerInput llama3_8b_input(int64_t context, int64_t gpu_mem) {
  PlannerInput in;
  in.config = load_model_config(test::testdata_dir() / "configs" / "Meta-Llama-3-8B-Instruct");
  in.kv_elem_bytes = 2;
  in.weight_elem_bytes = 2;
  in.gpu_mem = gpu_mem;
  in.host_mem = TiB;
  in.context = context;
  return in;
}

TEST(PlannerChunk, ShortContextIsOneChunk) {
  HEADINFER_REQUIRE_TESTDATA();
  const Plan p = make_plan(llama3_8b_input(8192 + 32, 0));
  ASSERT_TRUE(p.fits) << p.message;
  EXPECT_EQ(p.chunk, 8192 + 32);
  EXPECT_EQ(p.mlp_chunk, kMaxAutoMlpChunk);
  EXPECT_NE(p.chunk_reason.find("whole context"), std::string::npos) << p.chunk_reason;
  const Plan tiny = make_plan(llama3_8b_input(97, 24 * GiB));
  EXPECT_EQ(tiny.chunk, 97);
  EXPECT_EQ(tiny.mlp_chunk, 97);
}

TEST(PlannerChunk, PlentifulMemoryTakesTheLargest) {
  HEADINFER_REQUIRE_TESTDATA();
  for (const int64_t cap : {int64_t{0}, 80 * GiB}) {
    const Plan p = make_plan(llama3_8b_input(128 * 1024, cap));
    ASSERT_TRUE(p.fits) << p.message;
    EXPECT_EQ(p.chunk, 16384);
    EXPECT_EQ(p.chunk, kMaxAutoChunk);
    EXPECT_EQ(p.n_streamed_groups, 0);
  }
}

TEST(PlannerChunk, TightCapFitsOnly512) {
  HEADINFER_REQUIRE_TESTDATA();
  // Every head streamed in groups of 8: the cap holds weights, activations and a two-slot ring.
  PlannerInput in = llama3_8b_input(128 * 1024, 0);
  in.offload = OffloadMode::All;
  in.kv_group = 8;
  in.chunk = 512;
  const Plan at512 = make_plan(in);
  in.chunk = 1024;
  const Plan at1024 = make_plan(in);
  ASSERT_GT(at1024.gpu_bytes_total, at512.gpu_bytes_total);
  in.chunk = 0;
  in.gpu_mem = at512.gpu_bytes_total;  // exactly what chunk 512 needs
  Plan p = make_plan(in);
  ASSERT_TRUE(p.fits) << p.message;
  EXPECT_EQ(p.chunk, 512);
  EXPECT_EQ(p.mlp_chunk, 512);
  EXPECT_NE(p.chunk_reason.find("fits --gpu-mem"), std::string::npos) << p.chunk_reason;
  in.gpu_mem = at1024.gpu_bytes_total;
  EXPECT_EQ(make_plan(in).chunk, 1024);
  in.gpu_mem = at512.gpu_bytes_total - 1;  // below 512's needs: a smaller chunk still fits
  p = make_plan(in);
  ASSERT_TRUE(p.fits) << p.message;
  EXPECT_EQ(p.chunk, 256);
}

TEST(PlannerChunk, StreamingKeepsActivationsToTheirShare) {
  HEADINFER_REQUIRE_TESTDATA();
  PlannerInput in = llama3_8b_input(128 * 1024, 24 * GiB);
  // The device ops' scratch as the CUDA backend counts it for 16-bit weights: the input cast of
  // the widest linear (C x ffn bf16) and the fixed cuBLASLt and cuDNN workspaces.
  in.scratch_bytes = [&](int64_t chunk, int64_t) { return chunk * in.config.intermediate_size * 2 + (33 << 20); };
  const Plan p = make_plan(in);
  ASSERT_TRUE(p.fits) << p.message;
  ASSERT_GT(p.n_streamed_groups, 0);
  const int64_t left = in.gpu_mem - p.weight_bytes;
  EXPECT_LE(p.activation_bytes * kChunkShareOfFree, left);
  // Twice the chunk fits the cap but breaks the share, so it was not taken.
  in.chunk = p.chunk * 2;
  const Plan twice = make_plan(in);
  EXPECT_TRUE(twice.fits) << twice.message;
  EXPECT_GT(twice.activation_bytes * kChunkShareOfFree, left);
  EXPECT_EQ(p.chunk, 8192);
  EXPECT_NE(p.chunk_reason.find("1/4"), std::string::npos) << p.chunk_reason;
  EXPECT_EQ(twice.chunk_reason, "given (--chunk)");
}

TEST(PlannerChunk, GivenChunkIsKept) {
  HEADINFER_REQUIRE_TESTDATA();
  PlannerInput in = llama3_8b_input(128 * 1024, 24 * GiB);
  in.chunk = 512;
  const Plan p = make_plan(in);
  EXPECT_EQ(p.chunk, 512);
  EXPECT_EQ(p.mlp_chunk, 512);
  in.chunk = -1;
  EXPECT_THROW(make_plan(in), Error);
}

// Host-tier slabs: the largest power of two of positions whose slab of one group is at most
// kHostSlabTargetBytes (16 MiB), whatever the context; one slab stops at the context; a given
// size is kept; a negative one is an error.
TEST(Planner, HostSlabSize) {
  ModelConfig c;  // llama3-8b's attention shape
  c.model_type = "llama";
  c.n_layers = 32;
  c.layer_window.assign(32, 0);
  c.n_heads = 32;
  c.n_kv_heads = 8;
  c.head_dim = 128;
  c.hidden_size = 4096;
  c.intermediate_size = 14336;
  c.vocab_size = 128256;
  PlannerInput in;
  in.config = c;
  in.kv_elem_bytes = 2;
  in.context = int64_t{1} << 20;
  in.offload = OffloadMode::All;
  for (auto [group, positions] : {std::pair<int64_t, int64_t>{1, 32768}, {2, 16384}, {8, 4096}}) {
    in.kv_group = group;
    const Plan p = make_plan(in);
    EXPECT_EQ(p.host_slab_positions, positions) << "G " << group;  // 2 G 128 dims 2 B per position
    EXPECT_EQ(p.host_slab_bytes, kHostSlabTargetBytes) << "G " << group;
  }
  in.kv_group = 2;
  in.context = 1000;  // shorter than a slab: the one slab holds the context
  Plan p = make_plan(in);
  EXPECT_EQ(p.host_slab_positions, 16384);
  EXPECT_EQ(p.host_slab_bytes, 1000 * 2 * 2 * 128 * 2);
  in.host_slab_positions = 37;
  p = make_plan(in);
  EXPECT_EQ(p.host_slab_positions, 37);
  EXPECT_EQ(p.host_slab_bytes, 37 * 2 * 2 * 128 * 2);
  in.host_slab_positions = -1;
  EXPECT_THROW(make_plan(in), Error);
}

// Gemma-2-9B's shape (the built-in one bench and plan use: 42 layers alternating a 4096-token
// window and full attention, 8 kv heads of 256 dims), bf16 KV.
// At 128K tokens in prefill chunks of 2048.
PlannerInput gemma2_9b_at_128k() {
  PlannerInput in;
  in.config = parse_model_config(builtin_shape_config("gemma2-9b"), "shape gemma2-9b");
  in.context = 131072;
  in.chunk = 2048;
  in.kv_elem_bytes = 2;
  return in;
}

// layer_kv by hand: a window layer keeps 2 (W - 1) + C rows resident and a ring of
// ceil((W - 1 + C) / S) + 1 slabs; the whole context when that is not smaller, or without a window.
TEST(PlannerWindow, LayerKvByHand) {
  const int64_t ctx = 131072;
  LayerKv k = layer_kv(4096, ctx, 2048, 2048, true);
  EXPECT_EQ(k.window, 4096);
  EXPECT_EQ(k.device_rows, 2 * 4095 + 2048);
  EXPECT_EQ(k.host_slabs, 3 + 1);  // 4095 + 2048 = 6143 positions span 3 slabs, one more for the boundary
  k = layer_kv(4096, ctx, 2048, 100000, true);
  EXPECT_EQ(k.host_slabs, 2);  // as many as the context has: no ring
  EXPECT_EQ(layer_kv(0, ctx, 2048, 2048, true).device_rows, ctx);
  EXPECT_EQ(layer_kv(4096, ctx, 2048, 2048, false).device_rows, ctx);
  EXPECT_EQ(layer_kv(4096, ctx, 2048, 2048, false).window, 0);
  // 2 * 4095 + 2048 = 10238 is not below a context of 10238: the layer keeps it all.
  EXPECT_EQ(layer_kv(4096, 10238, 2048, 2048, true).window, 0);
  EXPECT_EQ(layer_kv(4096, 10239, 2048, 2048, true).window, 4096);
  EXPECT_EQ(layer_kv(int64_t{1} << 40, ctx, 2048, 2048, true).window, 0);  // a window past the context
  EXPECT_THROW(layer_kv(4096, ctx, 0, 2048, true), Error);
}

// Gemma-2-9B at 128K, everything resident: the 21 window layers count at 10238 of 131072
// positions, so the KV is the 21 global layers' plus 7.8% of them, 53.9% of the all-global figure.
TEST(PlannerWindow, Gemma2CountsWindowLayersAtTheirWindow) {
  PlannerInput in = gemma2_9b_at_128k();
  const Plan p = make_plan(in);
  ASSERT_TRUE(p.fits) << p.message;
  const int64_t per_position = 2 * 8 * 256 * 2;  // K + V of a layer's 8 heads, bf16
  EXPECT_EQ(p.n_window_layers, 21);
  ASSERT_EQ(p.layers.size(), 42u);
  EXPECT_EQ(p.layers[0].window, 4096);
  EXPECT_EQ(p.layers[0].device_rows, 10238);
  EXPECT_EQ(p.layers[1].window, 0);
  EXPECT_EQ(p.layers[1].device_rows, 131072);
  EXPECT_EQ(p.kv_bytes_full, 42 * per_position * 131072);
  EXPECT_EQ(p.kv_bytes_total, 21 * per_position * (131072 + 10238));
  EXPECT_EQ(p.kv_bytes_gpu, p.kv_bytes_total);
  EXPECT_EQ(p.window_saved_bytes, 21 * per_position * (131072 - 10238));
  EXPECT_NEAR(static_cast<double>(p.kv_bytes_total) / static_cast<double>(p.kv_bytes_full), 0.539, 0.001);

  in.window_kv = false;  // every layer at the whole context
  const Plan whole = make_plan(in);
  EXPECT_EQ(whole.n_window_layers, 0);
  EXPECT_EQ(whole.kv_bytes_total, whole.kv_bytes_full);
  EXPECT_EQ(whole.window_saved_bytes, 0);

  in.window_kv = true;
  in.context = 8192;  // shorter than 2 (W - 1) + C: nothing to trim
  EXPECT_EQ(make_plan(in).n_window_layers, 0);
}

// Offloaded: a window group's host tier is a ring of slabs and it streams only W - 1 positions per
// decoded token; a ring slot is as large as the largest streamed group's resident block.
TEST(PlannerWindow, Gemma2OffloadedStreamsTheWindowOnly) {
  PlannerInput in = gemma2_9b_at_128k();
  in.offload = OffloadMode::All;
  in.kv_group = 8;
  in.link_gbps = 50.0;
  const Plan p = make_plan(in);
  ASSERT_TRUE(p.fits) << p.message;
  const int64_t per_position = 2 * 8 * 256 * 2;
  EXPECT_EQ(p.host_slab_positions, 2048);  // 16 MiB / 8 KiB per position of the group
  EXPECT_EQ(p.layers[0].host_slabs, 4);    // ceil(6143 / 2048) + 1 of the context's 64
  EXPECT_EQ(p.kv_bytes_host, 21 * per_position * 131072 + 21 * per_position * 4 * 2048);
  EXPECT_EQ(p.kv_bytes_gpu, 0);
  EXPECT_EQ(p.slot_positions, 131072);
  EXPECT_EQ(p.ring_bytes, 2 * per_position * 131072);
  // Per decoded token: the 21 full groups' context, the 21 window groups' 4095 past positions,
  // and every group's new row back.
  EXPECT_EQ(p.link_bytes_per_token, 21 * per_position * 131072 + 21 * per_position * 4095 + 42 * per_position);
}

// Residency: full-context groups first (each resident byte saves a streamed byte per token),
// spread over their layers; window groups once every full one is resident, and then the ring only
// needs window-sized slots.
TEST(PlannerWindow, FullContextGroupsAreResidentFirst) {
  PlannerInput in = gemma2_9b_at_128k();
  in.kv_group = 1;
  in.weight_bytes = 0;
  in.activation_bytes = 0;
  const int64_t full_group = 2 * 256 * 2 * 131072, window_group = 2 * 256 * 2 * 10238;
  // Room for 10 full groups next to a ring of two full slots.
  in.gpu_mem = 12 * full_group;
  Plan p = make_plan(in);
  ASSERT_TRUE(p.fits) << p.message;
  EXPECT_EQ(p.n_resident_groups, 10);
  for (int64_t l = 0; l < 42; ++l)
    for (int64_t g = 0; g < 8; ++g) {
      if (p.is_resident(l, g)) {
        EXPECT_EQ(l % 2, 1) << "layer " << l << " is a window layer";
      }
    }
  EXPECT_EQ(p.slot_positions, 131072);
  // Every full group and 20 window groups resident: the ring holds window groups only.
  in.gpu_mem = 168 * full_group + 20 * window_group + 2 * window_group;
  p = make_plan(in);
  ASSERT_TRUE(p.fits) << p.message;
  EXPECT_EQ(p.n_resident_groups, 168 + 20);
  EXPECT_EQ(p.slot_positions, 10238);
  EXPECT_EQ(p.ring_bytes, 2 * window_group);
  EXPECT_EQ(p.kv_bytes_gpu, 168 * full_group + 20 * window_group);
}

TEST(Planner, EverySharedConfigLoadsAndPlans) {
  HEADINFER_REQUIRE_TESTDATA();
  int n = 0;
  for (const auto& e : fs::directory_iterator(test::testdata_dir() / "configs")) {
    if (!e.is_directory()) continue;
    SCOPED_TRACE(e.path().filename().string());
    const ModelConfig c = load_model_config(e.path());
    for (int64_t ctx : {int64_t{128} << 10, int64_t{1} << 20}) {
      PlannerInput in;
      in.config = c;
      in.context = ctx;
      in.gpu_mem = 24 * GiB;
      in.host_mem = TiB;
      const Plan p = make_plan(in);
      // Every layer at the whole context, less what the window layers (Mistral-7B-v0.1: all 32,
      // window 4096) do not keep.
      EXPECT_EQ(p.kv_bytes_full, c.kv_bytes_per_token(2) * ctx);
      EXPECT_EQ(p.kv_bytes_total + p.window_saved_bytes, p.kv_bytes_full);
      EXPECT_EQ(p.window_saved_bytes > 0, c.window(0) > 0);
      EXPECT_EQ(p.kv_bytes_gpu + p.kv_bytes_host, p.kv_bytes_total);
      EXPECT_EQ(p.gpu_bytes_total, p.weight_bytes + p.activation_bytes + p.kv_bytes_gpu + p.ring_bytes);
      if (p.fits) EXPECT_LE(p.gpu_bytes_total, in.gpu_mem);
      else EXPECT_FALSE(p.message.empty());
      // A 70B model's bf16 weights do not fit 24 GiB; every smaller one does.
      EXPECT_EQ(p.fits, p.weight_bytes + p.activation_bytes + p.ring_bytes <= in.gpu_mem);
    }
    ++n;
  }
  EXPECT_GE(n, 13);
}

TEST(Planner, EstimatesMatchWhatTheModelAllocates) {
  HEADINFER_REQUIRE_TESTDATA();
  namespace fs = std::filesystem;
  const fs::path tiny = test::testdata_dir() / "models" / "tiny";
  const fs::path families = fs::path(HEADINFER_SOURCE_DIR) / "tests" / "data" / "families";
  for (const fs::path& dir : {tiny / "llama3-f32", tiny / "qwen2-bf16", tiny / "qwen3-f32", tiny / "mistral_swa-bf16",
                              families / "gemma2-bf16", families / "gemma3-f32", families / "phi3-bf16",
                              families / "nemo-f32"}) {
    SCOPED_TRACE(dir.filename().string());
    auto ckpt = Checkpoint::open(dir);
    const ModelConfig& c = ckpt->config();
    auto device = make_cpu_device({1, 0});
    Model model(*ckpt, *device, {97, 512});
    const int64_t elem = static_cast<int64_t>(dtype_size(ckpt->find("model.embed_tokens.weight")->dtype));
    EXPECT_EQ(estimate_weight_bytes(c, elem), static_cast<int64_t>(model.weight_bytes()));
    EXPECT_EQ(estimate_activation_bytes(c, 1000, 97, 512),
              static_cast<int64_t>(device->bytes_in_use() - model.weight_bytes()));
  }
}

// Issue 16: what each of N shards loads and allocates, planned per device before any weight is read.
TEST(Planner, ShardEstimatesMatchWhatEachShardAllocates) {
  HEADINFER_REQUIRE_TESTDATA();
  namespace fs = std::filesystem;
  const fs::path tiny = test::testdata_dir() / "models" / "tiny";
  const fs::path families = fs::path(HEADINFER_SOURCE_DIR) / "tests" / "data" / "families";
  for (const fs::path& dir : {tiny / "llama2-f32", tiny / "llama3-f32", tiny / "qwen2-bf16", tiny / "qwen3-f32",
                              families / "gemma2-bf16", families / "phi3-bf16", families / "nemo-f32"}) {
    auto ckpt = Checkpoint::open(dir);
    const ModelConfig& c = ckpt->config();
    const int64_t elem = static_cast<int64_t>(dtype_size(ckpt->find("model.embed_tokens.weight")->dtype));
    for (int n : {2, static_cast<int>(c.n_kv_heads)}) {
      SCOPED_TRACE(dir.filename().string() + " on " + std::to_string(n) + " devices");
      test::CpuDevices devices(n);
      const std::vector<Device*>& ptrs = devices.ptrs;
      ShardedModel model(*ckpt, ptrs, {97, 512});
      for (int r = 0; r < n; ++r) {
        const Model& shard = model.shard(r);
        const ModelConfig sc = shard_config(c, r, n);
        EXPECT_EQ(estimate_shard_weight_bytes(c, r, n, elem), static_cast<int64_t>(shard.weight_bytes())) << r;
        EXPECT_EQ(estimate_activation_bytes(sc, 1000, 97, 512),
                  static_cast<int64_t>(ptrs[static_cast<size_t>(r)]->bytes_in_use() - shard.weight_bytes()))
            << r;
      }
      EXPECT_LT(estimate_shard_weight_bytes(c, 1, n, elem), estimate_weight_bytes(c, elem));
    }
  }
}

TEST(SizeParse, Units) {
  EXPECT_EQ(parse_byte_size("24GiB", "--gpu-mem"), 24 * GiB);
  EXPECT_EQ(parse_byte_size("1TiB", "--host-mem"), TiB);
  EXPECT_EQ(parse_byte_size("24GB", "--gpu-mem"), 24000000000);
  EXPECT_EQ(parse_byte_size("512MiB", "x"), 512 << 20);
  EXPECT_EQ(parse_byte_size("1.5GiB", "x"), 3 * GiB / 2);
  EXPECT_EQ(parse_byte_size("24g", "x"), 24 * GiB);
  EXPECT_EQ(parse_byte_size("4096", "x"), 4096);
  EXPECT_THROW(parse_byte_size("", "x"), Error);
  EXPECT_THROW(parse_byte_size("24GiBs", "x"), Error);
  EXPECT_THROW(parse_byte_size("GiB", "x"), Error);
  EXPECT_THROW(parse_byte_size("0", "x"), Error);
  EXPECT_THROW(parse_byte_size("-1GiB", "x"), Error);
}

// Copy streams: a copy that finishes late is still seen by whoever waits on its event.
TEST(Transfer, EventsOrderCopiesAcrossStreams) {
  auto transfer = make_cpu_transfer({0, 200, 5});
  auto a = transfer->make_copy_stream("a"), b = transfer->make_copy_stream("b");
  auto ev_a = transfer->make_event(), ev_b = transfer->make_event();
  std::vector<uint32_t> src(4096), mid(4096), dst(4096);
  for (int round = 0; round < 50; ++round) {
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint32_t>(round * 7919 + i);
    a->copy_2d(mid.data(), 1024, src.data(), 1024, 1024, 16);  // 2-D: 16 rows of 256 words
    a->record(*ev_a);
    b->wait(*ev_a);
    b->copy_2d(dst.data(), 4 * dst.size(), mid.data(), 4 * mid.size(), 4 * mid.size(), 1);
    b->record(*ev_b);
    transfer->compute_stream().wait(*ev_b);  // the compute side's wait: blocks until b is done
    ASSERT_TRUE(ev_b->done());
    ASSERT_EQ(0, std::memcmp(src.data(), dst.data(), 4 * src.size())) << "round " << round;
  }
}

TEST(Transfer, StridedRowsAndHostBudget) {
  auto transfer = make_cpu_transfer({1000, 0, 1});
  auto s = transfer->make_copy_stream("s");
  std::vector<float> src(60), dst(60, -1.0f);
  std::iota(src.begin(), src.end(), 1.0f);
  // 3 rows of 4 floats, source rows 20 floats apart, destination rows 10 apart.
  s->copy_2d(dst.data(), 40, src.data(), 80, 16, 3);
  s->synchronize();
  for (int r = 0; r < 3; ++r)
    for (int i = 0; i < 10; ++i) EXPECT_EQ(dst[r * 10 + i], i < 4 ? src[r * 20 + i] : -1.0f);
  void* p = transfer->alloc_host(600, "test");
  EXPECT_THROW(transfer->alloc_host(401, "test"), Error);
  EXPECT_EQ(transfer->host_bytes_in_use(), 600u);
  transfer->free_host(p);
  EXPECT_EQ(transfer->host_bytes_in_use(), 0u);
  EXPECT_EQ(transfer->host_peak_bytes(), 600u);
}

}  // namespace
}  // namespace headinfer
