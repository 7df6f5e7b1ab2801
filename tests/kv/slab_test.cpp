// The host tier grows in slabs as the context grows (issue 5): the plan checks the whole
// context's host bytes before any work, but a host-tier group only holds the slabs of S positions
// that its rows have reached. Here: the HeadStore's slab arithmetic and copies (a write that
// straddles a slab boundary, a short last slab, fetches of every length), the host bytes after a
// short prompt and as the context grows (what the transfer really allocated), and the exactness
// contract with small slabs: every placement bit-identical to all-resident for chunk sizes 1, 7,
// 97 and 1500 across slab boundaries, late copies included.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/error.h"
#include "headinfer/head_store.h"
#include "headinfer/model.h"
#include "headinfer/random_model.h"
#include "model_set.h"
#include "placement_run.h"
#include "testdata.h"

namespace headinfer {
namespace {

namespace fs = std::filesystem;

using test::random_prompt;

std::unique_ptr<Checkpoint> tiny_model() { return Checkpoint::random(builtin_shape_config("tiny"), DType::F32, 5); }

// Value of head h's K (w 0) or V (w 1) at position pos, channel x: distinct for every element.
float coded(int64_t w, int64_t h, int64_t pos, int64_t x) {
  return static_cast<float>(((w * 8 + h) * 4096 + pos) * 64 + x);
}

TEST(HostSlabs, CopiesStraddleSlabsAndTheLastSlabIsShort) {
  const auto ckpt = tiny_model();
  const ModelConfig& c = ckpt->config();
  constexpr int64_t kContext = 150, kSlab = 64;  // slabs of 64, 64 and 22 positions
  PlannerInput in;
  in.config = c;
  in.context = kContext;
  in.kv_elem_bytes = 4;
  in.offload = OffloadMode::All;
  in.kv_group = c.n_kv_heads;
  in.host_slab_positions = kSlab;
  const Plan plan = make_plan(in);
  ASSERT_TRUE(plan.fits) << plan.message;
  EXPECT_EQ(plan.host_slab_positions, kSlab);
  const int64_t G = plan.group_size, d = c.head_dim;
  const size_t row = static_cast<size_t>(d) * 4, position_bytes = 2 * static_cast<size_t>(G) * row;
  EXPECT_EQ(plan.host_slab_bytes, static_cast<int64_t>(kSlab * position_bytes));

  auto device = make_cpu_device({1, 0});
  CpuTransferOptions to;
  to.copy_jitter_us = 50;  // copies land late: a missing synchronize shows as wrong rows
  auto transfer = make_cpu_transfer(to);
  {
    HeadStore store(*device, *transfer, c, plan, DType::F32);
    EXPECT_EQ(store.n_slabs(), 3);
    EXPECT_EQ(store.slab_rows(0), 64);
    EXPECT_EQ(store.slab_rows(2), 22);
    EXPECT_EQ(transfer->host_bytes_in_use(), 0u) << "nothing is allocated before a row is written";
    store.reserve(0, 0, 10);
    EXPECT_EQ(store.reserved(0, 0), 64);
    EXPECT_EQ(transfer->host_bytes_in_use(), 64 * position_bytes);
    store.reserve(0, 0, 64);
    EXPECT_EQ(transfer->host_bytes_in_use(), 64 * position_bytes);
    store.reserve(0, 0, 65);
    EXPECT_EQ(transfer->host_bytes_in_use(), 128 * position_bytes);

    // A device group [2][G][150][d] (a ring slot's layout) with every element distinct.
    const size_t group_bytes = 2 * static_cast<size_t>(G * kContext) * row;
    std::vector<float> src(group_bytes / 4);
    for (int64_t w = 0; w < 2; ++w)
      for (int64_t h = 0; h < G; ++h)
        for (int64_t pos = 0; pos < kContext; ++pos)
          for (int64_t x = 0; x < d; ++x)
            src[static_cast<size_t>(((w * G + h) * kContext + pos) * d + x)] = coded(w, h, pos, x);
    DeviceBuffer slot(*device, group_bytes, "test slot"), back(*device, group_bytes, "test slot");
    device->write_from_host(slot.data(), src.data(), group_bytes);
    auto stream = transfer->make_copy_stream("test");
    // Write-backs as chunks make them: one that straddles 64, one that ends on 128, the short slab.
    for (auto [b, e] : {std::pair<int64_t, int64_t>{0, 60}, {60, 70}, {70, 128}, {128, 150}}) {
      store.reserve(0, 0, e);
      store.copy_from_device(*stream, 0, 0, {slot.data(), kContext}, b, e);
    }
    stream->synchronize();
    EXPECT_EQ(transfer->host_bytes_in_use(), static_cast<size_t>(plan.group_block_bytes))
        << "the full context's slabs hold exactly the group's block bytes";
    for (int64_t w = 0; w < 2; ++w)
      for (int64_t h = 0; h < G; ++h) {
        const void* const* pages = store.host_pages(0, h, static_cast<int>(w));
        for (int64_t pos = 0; pos < kContext; ++pos) {
          const auto* got = static_cast<const float*>(store.host_row(0, h, static_cast<int>(w), pos));
          const int64_t j = pos / kSlab;
          EXPECT_EQ(got, reinterpret_cast<const float*>(static_cast<const char*>(pages[j]) + (pos - j * kSlab) * row));
          for (int64_t x = 0; x < d; ++x)
            ASSERT_EQ(got[x], coded(w, h, pos, x)) << "w " << w << " head " << h << " pos " << pos << " x " << x;
        }
      }
    // Fetches of rows [0, n): n inside the first slab, on its end, one past, all of them.
    for (int64_t n : {1, 64, 65, 129, 150}) {
      SCOPED_TRACE("fetch of " + std::to_string(n) + " rows");
      std::vector<float> poison(src.size(), -1.0f), got(src.size());
      device->write_from_host(back.data(), poison.data(), group_bytes);
      store.copy_to_device(*stream, 0, 0, {back.data(), kContext}, 0, n);
      stream->synchronize();
      device->read_to_host(got.data(), back.data(), group_bytes);
      for (int64_t r = 0; r < 2 * G; ++r)
        for (int64_t pos = 0; pos < kContext; ++pos) {
          const size_t at = static_cast<size_t>((r * kContext + pos) * d);
          ASSERT_EQ(got[at], pos < n ? src[at] : -1.0f) << "row " << r << " pos " << pos;
        }
    }
    // Rows no slab covers are refused, not read.
    EXPECT_THROW(store.copy_to_device(*stream, 1, 0, {back.data(), kContext}, 0, 5), Error);
    EXPECT_THROW(store.host_row(1, 0, 0, 0), Error);
    EXPECT_THROW(store.reserve(0, 0, kContext + 1), Error);
  }
  EXPECT_EQ(transfer->host_bytes_in_use(), 0u);
  EXPECT_EQ(transfer->host_peak_bytes(), static_cast<size_t>(plan.group_block_bytes));
}

// Host bytes follow the context: one slab per host-tier group after a short prompt, one more each
// time the rows reach the next slab, kept over reset(), and at the full context exactly the
// plan's host bytes (1500 is not a multiple of 64: the last slab holds 28 positions).
TEST(HostSlabs, GrowWithTheContext) {
  const auto ckpt = tiny_model();
  const ModelConfig& c = ckpt->config();
  auto device = make_cpu_device({2, 0});
  EngineOptions eo;
  eo.context = 1500;
  eo.chunk = 97;
  eo.kv.offload = OffloadMode::All;
  eo.kv.kv_group = 1;
  eo.kv.host_slab_positions = 64;
  eo.kv.copy_jitter_us = 20;
  Engine engine(*ckpt, *device, eo);
  const Plan& plan = *kv_cache_plan(engine.kv_cache());
  const int64_t n_host = plan.n_streamed_groups;
  ASSERT_EQ(n_host, c.n_layers * c.n_kv_heads);
  const int64_t position_bytes = 2 * c.head_dim * 4;
  auto host = [&] { return static_cast<int64_t>(kv_cache_host_peak_bytes(engine.kv_cache())); };
  auto slabs = [&](int64_t n) { return n_host * n * 64 * position_bytes; };

  EXPECT_EQ(host(), 0) << "nothing pinned before the first token";
  engine.prefill(random_prompt(10, c.vocab_size, 1));
  EXPECT_EQ(host(), slabs(1));
  EXPECT_LT(host() * 20, plan.kv_bytes_host) << "a short prompt holds a small part of the context's host bytes";
  engine.prefill(random_prompt(246, c.vocab_size, 2));  // to 256: three chunk writes straddle 64, 128, 192
  EXPECT_EQ(host(), slabs(4));
  engine.decode(5);  // position 256: the first row of slab 4
  EXPECT_EQ(host(), slabs(5));
  engine.reset();
  engine.prefill(random_prompt(5, c.vocab_size, 3));
  EXPECT_EQ(host(), slabs(5)) << "reset keeps what was allocated";
  engine.fill_random_context(1500, 7);
  EXPECT_EQ(host(), plan.kv_bytes_host);
}

// The default slab size at a long context: the plan checks the full context against the host
// memory (and refuses one byte less, before any work), while a short prompt allocates one slab
// of the planner's size per group: an eighth of the 1M-token context for this model.
TEST(HostSlabs, LongContextPlansTheWholeAndAllocatesTheStart) {
  const auto ckpt = tiny_model();
  const ModelConfig& c = ckpt->config();
  constexpr int64_t kContext = int64_t{1} << 20;
  PlannerInput in;
  in.config = c;
  in.context = kContext;
  in.kv_elem_bytes = 4;
  in.offload = OffloadMode::All;
  in.kv_group = 1;
  const Plan full = make_plan(in);
  ASSERT_TRUE(full.fits) << full.message;
  // 2 * 16 dims * 4 bytes = 128 B per position of a group: 16 MiB slabs are 128K positions.
  EXPECT_EQ(full.host_slab_positions, int64_t{1} << 17);
  EXPECT_EQ(full.host_slab_bytes, kHostSlabTargetBytes);

  auto device = make_cpu_device({2, 0});
  EngineOptions eo;
  eo.context = kContext;
  eo.chunk = 16;
  eo.kv.offload = OffloadMode::All;
  eo.kv.kv_group = 1;
  eo.kv.host_mem = full.kv_bytes_host - 1;
  try {
    Engine engine(*ckpt, *device, eo);
    ADD_FAILURE() << "a host one byte short of the context must be refused at start";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("host-tier KV needs"), std::string::npos) << e.what();
  }
  eo.kv.host_mem = full.kv_bytes_host;
  Engine engine(*ckpt, *device, eo);
  engine.prefill(random_prompt(20, c.vocab_size, 4));
  const auto held = static_cast<int64_t>(kv_cache_host_peak_bytes(engine.kv_cache()));
  EXPECT_EQ(held, full.n_streamed_groups * kHostSlabTargetBytes);
  EXPECT_EQ(held * 8, full.kv_bytes_host);
}

// ---- The exactness contract with small slabs ----

using RunResult = test::PlacementRun;

constexpr int64_t kDecode = 4;

RunResult run(const Checkpoint& ckpt, const std::vector<int32_t>& prompt, int64_t chunk, const KvPlacementOptions& kv) {
  return test::run_placement(ckpt, prompt, chunk, kDecode, kv);
}

using test::expect_bit_identical;

// Prompt lengths: several slabs of 64 and 37, with chunks and decode steps across boundaries
// (chunk 1: decode crosses 192; chunk 97: crosses 256; chunk 1500: the second chunk crosses 1536).
int64_t prompt_length(int64_t chunk) {
  switch (chunk) {
    case 1: return 190;
    case 7: return 200;
    case 97: return 254;
    default: return chunk + 103;
  }
}

// A model of each kind: MHA (stories260k), GQA (llama3), sliding window (mistral_swa), bf16
// weights with q/k norm (qwen3).
std::vector<fs::path> some_models() {
  const fs::path tiny = test::testdata_dir() / "models" / "tiny";
  return {test::testdata_dir() / "models" / "stories260k", tiny / "llama3-f32", tiny / "mistral_swa-f32",
          tiny / "qwen3-bf16"};
}

class SmallSlabs : public ::testing::TestWithParam<int64_t> {};

TEST_P(SmallSlabs, EveryPlacementIsBitIdenticalToAllResident) {
  HEADINFER_REQUIRE_TESTDATA();
  const int64_t chunk = GetParam();
  for (const fs::path& dir : some_models()) {
    SCOPED_TRACE(dir.filename().string() + " chunk " + std::to_string(chunk));
    auto ckpt = Checkpoint::open(dir);
    const ModelConfig& c = ckpt->config();
    const auto prompt = random_prompt(prompt_length(chunk), c.vocab_size, 4242);
    for (DType kv_dtype : {DType::F32, DType::BF16}) {
      KvPlacementOptions base;
      base.offload = OffloadMode::None;
      base.kv_dtype = kv_dtype;
      const RunResult ref = run(*ckpt, prompt, chunk, base);
      const std::string dt(dtype_name(kv_dtype));

      // Every group streamed, slabs of 64 (G 1, late copies) and 37 (G all).
      for (auto [group, slab] : {std::pair<int64_t, int64_t>{1, 64}, {c.n_kv_heads, 37}}) {
        KvPlacementOptions o = base;
        o.offload = OffloadMode::All;
        o.kv_group = group;
        o.host_slab_positions = slab;
        o.copy_jitter_us = group == 1 ? 30 : 0;
        const RunResult got = run(*ckpt, prompt, chunk, o);
        EXPECT_EQ(got.plan.n_resident_groups, 0);
        EXPECT_EQ(got.plan.host_slab_positions, slab);
        expect_bit_identical(ref, got,
                         dt + " offload all, G " + std::to_string(group) + ", slabs of " + std::to_string(slab));
      }

      // About half resident, the rest streamed from slabs of 64.
      const int64_t context = static_cast<int64_t>(prompt.size()) + kDecode;
      auto probe = make_cpu_device({1, 0});
      const Model weights(*ckpt, *probe, {std::min(chunk, context), 512});
      const auto fixed = static_cast<int64_t>(probe->bytes_in_use());
      const int64_t n_blocks = c.n_layers * c.n_kv_heads;
      KvPlacementOptions o = base;
      o.offload = OffloadMode::Auto;
      o.kv_group = 1;
      o.host_slab_positions = 64;
      o.gpu_mem = test::cap_for_resident(c, fixed, context, chunk, n_blocks / 2, o);
      const RunResult got = run(*ckpt, prompt, chunk, o);
      EXPECT_GT(got.plan.n_resident_groups, 0);
      EXPECT_GT(got.plan.n_streamed_groups, 0);
      expect_bit_identical(ref, got, dt + " offload auto (split), slabs of 64");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Chunks, SmallSlabs, ::testing::Values(1, 7, 97, 1500),
                         [](const auto& info) { return "chunk" + std::to_string(info.param); });

}  // namespace
}  // namespace headinfer
