// Prefix reuse and KV snapshots (issue 13), on every placement: a reused run (the held KV cut back
// to the common prefix, only the rest prefilled) and a snapshot loaded onto any placement give
// logits bit-identical to a fresh run of the same ids on the all-resident placement; bad snapshot
// files are clear errors.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/error.h"
#include "headinfer/kv_snapshot.h"
#include "headinfer/model.h"
#include "model_set.h"
#include "placement_run.h"
#include "testdata.h"

namespace headinfer {
namespace {

namespace fs = std::filesystem;
using test::all_models;
using test::random_prompt;

constexpr int64_t kChunk = 7;    // prompts span several chunks, the reused part ends mid-chunk
constexpr int64_t kDecode = 5;

struct Placement {
  std::string name;
  KvPlacementOptions kv;
};

// Bytes on the device before any KV: weights, activations, tables.
int64_t fixed_device_bytes(const Checkpoint& ckpt, int64_t context) {
  auto device = make_cpu_device({1, 0});
  Model model(ckpt, *device, {std::min(kChunk, context), 512});
  return static_cast<int64_t>(device->bytes_in_use());
}

// offload none; all with G = 1 and 2; auto split with about half the head blocks resident (G = 1).
std::vector<Placement> placements(const Checkpoint& ckpt, int64_t context) {
  const ModelConfig& c = ckpt.config();
  std::vector<Placement> out;
  Placement none{"none", {}};
  none.kv.offload = OffloadMode::None;
  out.push_back(none);
  for (int64_t g : {1, 2}) {
    if (c.n_kv_heads % g != 0) continue;
    Placement all{"all G" + std::to_string(g), {}};
    all.kv.offload = OffloadMode::All;
    all.kv.kv_group = g;
    all.kv.copy_jitter_us = g == 1 ? 20 : 0;
    out.push_back(all);
  }
  const int64_t n_blocks = c.n_layers * c.n_kv_heads;
  KvPlacementOptions g1;
  g1.kv_group = 1;
  for (auto [resident, cap] :
       test::resident_caps(c, fixed_device_bytes(ckpt, context), context, kChunk, {n_blocks / 2}, g1)) {
    Placement split{"split " + std::to_string(resident) + " resident", {}};
    split.kv.offload = OffloadMode::Auto;
    split.kv.kv_group = 1;
    split.kv.gpu_mem = cap;
    out.push_back(split);
  }
  return out;
}

struct EngineRun {
  std::unique_ptr<Device> device;
  std::unique_ptr<Engine> engine;
};

EngineRun make_run(const Checkpoint& ckpt, int64_t context, const KvPlacementOptions& kv) {
  EngineRun r;
  r.device = make_cpu_device({2, static_cast<size_t>(kv.gpu_mem)});
  EngineOptions eo;
  eo.context = context;
  eo.chunk = kChunk;
  eo.kv = kv;
  r.engine = std::make_unique<Engine>(ckpt, *r.device, eo);
  return r;
}

// The logits after `first` (a prefill's), then after each of kDecode greedy steps: [1 + kDecode, vocab].
std::vector<float> continue_greedy(Engine& e, std::span<const float> first) {
  std::vector<float> out(first.begin(), first.end());
  std::span<const float> logits = first;
  for (int64_t i = 0; i < kDecode; ++i) {
    const auto id = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    logits = e.decode(id);
    out.insert(out.end(), logits.begin(), logits.end());
  }
  return out;
}

void expect_bits(const std::vector<float>& ref, const std::vector<float>& got, const std::string& what) {
  ASSERT_EQ(ref.size(), got.size()) << what;
  EXPECT_EQ(0, std::memcmp(ref.data(), got.data(), ref.size() * sizeof(float))) << what << ": logits differ in their bits";
}

fs::path temp_path(const std::string& name) {
  return fs::temp_directory_path() / ("headinfer_kv_reuse_" + std::to_string(::getpid()) + "_" + name);
}

TEST(PrefixReuse, ReusedAndLoadedRunsAreBitIdenticalOnEveryPlacement) {
  HEADINFER_REQUIRE_TESTDATA();
  for (const fs::path& dir : all_models()) {
    SCOPED_TRACE(dir.filename().string());
    auto ckpt = Checkpoint::open(dir);
    const int64_t vocab = ckpt->config().vocab_size;
    // The conversation: a shared head of 23 ids, then this turn's 17; the previous turn diverged
    // after the head (13 other ids) and generated 4 more tokens.
    const auto head = random_prompt(23, vocab, 11);
    auto turn = head;
    for (int32_t id : random_prompt(17, vocab, 12)) turn.push_back(id);
    auto previous = head;
    for (int32_t id : random_prompt(13, vocab, 13)) previous.push_back(id);
    previous.back() = (turn[previous.size() - 1] + 1) % static_cast<int32_t>(vocab);  // surely diverges there
    const int64_t context = static_cast<int64_t>(turn.size()) + kDecode + 3;

    const std::vector<Placement> ps = placements(*ckpt, context);
    ASSERT_GE(ps.size(), 3u);
    EngineRun fresh = make_run(*ckpt, context, ps[0].kv);
    const std::vector<float> ref = continue_greedy(*fresh.engine, fresh.engine->prefill(turn));
    for (const Placement& p : ps) {
      SCOPED_TRACE(p.name);
      EngineRun r = make_run(*ckpt, context, p.kv);
      Engine& e = *r.engine;
      GenerateOptions go;
      go.max_new_tokens = 4;
      go.ignore_eos = true;
      go.reuse_prefix = true;
      generate(e, previous, go);
      ASSERT_EQ(e.n_past(), static_cast<int64_t>(previous.size()) + 3);
      // The held ids share `head` and perhaps a few more with this turn, never the previous turn's last id.
      const std::vector<int32_t> held(e.ids().begin(), e.ids().end());
      const auto common = std::mismatch(held.begin(), held.end(), turn.begin()).first - held.begin();
      ASSERT_GE(common, static_cast<std::ptrdiff_t>(head.size()));
      ASSERT_LT(common, static_cast<std::ptrdiff_t>(previous.size()));
      const int64_t kept = e.keep_common_prefix(turn);
      EXPECT_EQ(kept, common);
      const std::vector<float> got =
          continue_greedy(e, e.prefill(std::span<const int32_t>(turn).subspan(static_cast<size_t>(kept))));
      expect_bits(ref, got, "reused");

      // The same conversation saved here and loaded on every placement continues identically.
      const fs::path file = temp_path("snap");
      e.truncate(static_cast<int64_t>(turn.size()) - 1);
      const Engine::SnapshotStats saved = e.save_kv(file);
      EXPECT_EQ(saved.positions, static_cast<int64_t>(turn.size()) - 1);
      EXPECT_EQ(saved.bytes, fs::file_size(file));
      for (const Placement& q : ps) {
        SCOPED_TRACE("loaded on " + q.name);
        EngineRun l = make_run(*ckpt, context, q.kv);
        l.engine->load_kv(file);
        ASSERT_EQ(l.engine->n_past(), static_cast<int64_t>(turn.size()) - 1);
        ASSERT_TRUE(std::equal(turn.begin(), turn.end() - 1, l.engine->ids().begin()));
        // The held ids are a prefix of the turn: only its last id is prefilled.
        EXPECT_EQ(l.engine->keep_common_prefix(turn), static_cast<int64_t>(turn.size()) - 1);
        expect_bits(ref, continue_greedy(*l.engine, l.engine->prefill(std::span<const int32_t>(turn).last(1))),
                    "loaded");
      }
      fs::remove(file);
    }
  }
}

// Hybrid decode (some host-tier groups attended on the CPU, slabs of 16 positions): equal to the
// device's attention only up to fp32 rounding, so the reference is a fresh run on the same
// placement; reuse and a snapshot loaded there must match it bit for bit when the rest prefilled
// is more than one token (one token is a decode step, attended partly on the host).
TEST(PrefixReuse, HybridDecodeReuseAndLoadMatchAFreshHybridRun) {
  HEADINFER_REQUIRE_TESTDATA();
  for (const char* name : {"stories260k", "tiny/qwen2-f32"}) {
    SCOPED_TRACE(name);
    auto ckpt = Checkpoint::open(test::testdata_dir() / "models" / name);
    const ModelConfig& c = ckpt->config();
    KvPlacementOptions kv;
    kv.offload = OffloadMode::All;
    kv.kv_group = 1;
    kv.hybrid = HybridMode::Auto;
    kv.cpu_groups = c.n_layers * c.n_kv_heads / 2;
    kv.host_threads = 2;
    kv.host_slab_positions = 16;
    const auto turn = random_prompt(37, c.vocab_size, 21);
    const int64_t context = 37 + kDecode + 8;
    EngineRun fresh = make_run(*ckpt, context, kv);
    ASSERT_GT(kv_cache_plan(fresh.engine->kv_cache())->n_cpu_groups, 0);
    const std::vector<float> ref = continue_greedy(*fresh.engine, fresh.engine->prefill(turn));

    EngineRun r = make_run(*ckpt, context, kv);
    GenerateOptions go;
    go.max_new_tokens = 9;  // decode steps through the CPU path past position 20, then cut back to 20
    go.ignore_eos = true;
    generate(*r.engine, std::span<const int32_t>(turn).first(20), go);
    ASSERT_EQ(r.engine->keep_common_prefix(turn), 20);
    expect_bits(ref, continue_greedy(*r.engine, r.engine->prefill(std::span<const int32_t>(turn).subspan(20))),
                "reused");

    const fs::path file = temp_path("hybrid");
    r.engine->truncate(36);
    r.engine->save_kv(file);
    EngineRun l = make_run(*ckpt, context, kv);
    l.engine->load_kv(file);
    fs::remove(file);
    ASSERT_EQ(l.engine->keep_common_prefix(turn), 36);
    // A one-token forward is a decode step, whose CPU groups the host attends (equal to the fresh
    // run's prefill chunk only up to rounding): cut back one more and prefill the last two.
    l.engine->truncate(35);
    expect_bits(ref, continue_greedy(*l.engine, l.engine->prefill(std::span<const int32_t>(turn).last(2))), "loaded");
  }
}

// Window layers keep only their window (issue 14): a cut back to n needs a window layer's
// positions from n - W + 1 on. gemma2 (windows on layers 0 and 2) and mistral_swa (every layer),
// window 48, chunks of 7: the trimmed blocks hold 101 positions of a 320-position context.
// A cut back inside what the layers kept reuses them; one before it recomputes the whole prompt
// (keep_common_prefix keeps nothing; truncate says so); both continue bit-identical to a fresh
// run. Snapshots hold a window layer's last positions only and load onto trimmed and untrimmed
// placements alike.
TEST(PrefixReuse, WindowLayersReuseInsideTheirWindowAndRecomputeBeforeIt) {
  HEADINFER_REQUIRE_TESTDATA();
  const fs::path families = fs::path(HEADINFER_SOURCE_DIR) / "tests" / "data" / "families";
  for (const fs::path& dir : {families / "gemma2-f32", test::testdata_dir() / "models" / "tiny" / "mistral_swa-f32"}) {
    SCOPED_TRACE(dir.filename().string());
    auto ckpt = Checkpoint::open(dir);
    const ModelConfig& c = ckpt->config();
    const int64_t window = 48, context = 320;
    auto turn = random_prompt(260, c.vocab_size, 31);
    EngineRun fresh = make_run(*ckpt, context, {});
    const std::vector<float> ref = continue_greedy(*fresh.engine, fresh.engine->prefill(turn));
    ASSERT_GT(kv_cache_plan(fresh.engine->kv_cache())->n_window_layers, 0);

    std::vector<Placement> ps;
    Placement none{"none", {}};
    none.kv.offload = OffloadMode::None;
    ps.push_back(none);
    Placement rings{"all G1, slabs of 16", {}};
    rings.kv.offload = OffloadMode::All;
    rings.kv.kv_group = 1;
    rings.kv.host_slab_positions = 16;
    rings.kv.copy_jitter_us = 20;
    ps.push_back(rings);
    Placement whole{"none, whole context", {}};
    whole.kv.offload = OffloadMode::None;
    whole.kv.window_kv = false;
    for (const Placement& p : ps) {
      SCOPED_TRACE(p.name);
      EngineRun r = make_run(*ckpt, context, p.kv);
      Engine& e = *r.engine;
      e.prefill(turn);  // 260 held: the window layers keep at most their last 101
      EXPECT_GT(e.min_kept_prefix(), 0);
      EXPECT_LE(e.min_kept_prefix(), 260);
      // Far before the window: an error naming the remedy, and a prefix that reuses nothing.
      try {
        e.truncate(20);
        ADD_FAILURE() << "cut back to 20 of 260 with windows of 48";
      } catch (const Error& err) {
        EXPECT_NE(std::string(err.what()).find("recompute from the start"), std::string::npos) << err.what();
      }
      EXPECT_EQ(e.n_past(), 260) << "a refused cut keeps what is held";
      auto early = std::vector<int32_t>(turn.begin(), turn.begin() + 20);
      for (int32_t id : random_prompt(200, c.vocab_size, 32)) early.push_back(id);
      EXPECT_EQ(e.keep_common_prefix(early), 0);
      EXPECT_EQ(e.n_past(), 0);
      EngineRun fresh_early = make_run(*ckpt, context, {});
      expect_bits(continue_greedy(*fresh_early.engine, fresh_early.engine->prefill(early)),
                  continue_greedy(e, e.prefill(early)), "recomputed after a cut before the window");

      // Inside the window: 230 ids of `turn` then others, cut back to 230 and continue with `turn`.
      e.reset();
      auto near = std::vector<int32_t>(turn.begin(), turn.begin() + 230);
      near.push_back((turn[230] + 1) % static_cast<int32_t>(c.vocab_size));
      e.prefill(near);  // 231 held: a cut to 230 needs positions from 183 on
      ASSERT_LE(e.min_kept_prefix(), 230);
      EXPECT_EQ(e.keep_common_prefix(turn), 230);
      expect_bits(ref, continue_greedy(e, e.prefill(std::span<const int32_t>(turn).subspan(230))),
                  "reused inside the window");

      // A snapshot of 259 positions holds the window layers' last 48 only; it loads onto every
      // placement, trimmed or not, and continues bit-identically.
      e.truncate(259);
      const fs::path file = temp_path("window");
      e.save_kv(file);
      const int64_t window_rows = window - 1;  // positions 212 .. 258: what a chunk at 259 sees besides itself
      for (const Placement& q : {ps[0], ps[1], whole}) {
        SCOPED_TRACE("loaded on " + q.name);
        EngineRun l = make_run(*ckpt, context, q.kv);
        l.engine->load_kv(file);
        ASSERT_EQ(l.engine->n_past(), 259);
        EXPECT_EQ(l.engine->min_kept_prefix(), 259) << "the window layers hold positions 212 on only";
        EXPECT_THROW(l.engine->truncate(200), Error);
        EXPECT_EQ(l.engine->keep_common_prefix(turn), 259);
        expect_bits(ref, continue_greedy(*l.engine, l.engine->prefill(std::span<const int32_t>(turn).last(1))),
                    "loaded");
      }
      // The file: 259 ids, then per layer K and V of each kv head over its rows, f32.
      int64_t rows = 0;
      for (int64_t l = 0; l < c.n_layers; ++l) rows += c.window(l) > 0 ? window_rows : 259;
      EXPECT_GT(fs::file_size(file), static_cast<uintmax_t>(259 * 4 + rows * 2 * c.n_kv_heads * c.head_dim * 4));
      EXPECT_LT(fs::file_size(file), static_cast<uintmax_t>(259 * 4 + rows * 2 * c.n_kv_heads * c.head_dim * 4 + 8192));
      fs::remove(file);
    }
  }
}

TEST(PrefixReuse, WholePromptHeldPrefillsItsLastToken) {
  HEADINFER_REQUIRE_TESTDATA();
  auto ckpt = Checkpoint::open(test::testdata_dir() / "models" / "stories260k");
  const auto ids = random_prompt(19, ckpt->config().vocab_size, 5);
  EngineRun r = make_run(*ckpt, 32, {});
  r.engine->prefill(ids);
  EXPECT_EQ(r.engine->keep_common_prefix(ids), 18);
  EXPECT_EQ(r.engine->keep_common_prefix(std::span<const int32_t>(ids).first(10)), 9);
  EXPECT_EQ(r.engine->keep_common_prefix(std::vector<int32_t>{ids[0] + 1, 3}), 0);
  EXPECT_THROW(r.engine->truncate(5), Error);  // nothing beyond 0 is held now
}

TEST(PrefixReuse, CancelledGenerationKeepsWhatFinished) {
  HEADINFER_REQUIRE_TESTDATA();
  auto ckpt = Checkpoint::open(test::testdata_dir() / "models" / "stories260k");
  const auto ids = random_prompt(30, ckpt->config().vocab_size, 6);
  EngineRun r = make_run(*ckpt, 64, {});
  GenerateOptions go;
  go.max_new_tokens = 10;
  go.ignore_eos = true;
  int chunks = 0;
  GenerateCallbacks cb;
  cb.on_prefill_progress = [&](int64_t, int64_t) { ++chunks; };
  cb.cancelled = [&] { return chunks == 2; };  // after the second chunk of 7
  EXPECT_THROW(generate(*r.engine, ids, go, cb), Cancelled);
  EXPECT_EQ(r.engine->n_past(), 2 * kChunk);
  EXPECT_TRUE(std::equal(r.engine->ids().begin(), r.engine->ids().end(), ids.begin()));
  int tokens = 0;
  cb = {};
  cb.on_token = [&](int32_t) { ++tokens; };
  cb.cancelled = [&] { return tokens == 3; };
  go.reuse_prefix = true;
  EXPECT_THROW(generate(*r.engine, ids, go, cb), Cancelled);
  EXPECT_EQ(tokens, 3);
  EXPECT_EQ(r.engine->n_past(), 30 + 2);  // the prompt and the two tokens fed back
}

class SnapshotErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    HEADINFER_REQUIRE_TESTDATA();
    ckpt_ = Checkpoint::open(test::testdata_dir() / "models" / "stories260k");
    run_ = make_run(*ckpt_, 64, {});
    run_.engine->prefill(random_prompt(41, ckpt_->config().vocab_size, 8));
    file_ = temp_path("err");
    run_.engine->save_kv(file_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove(file_, ec);
  }
  // The error of loading the file into an engine that holds 3 positions, which it must still
  // hold afterwards (bad before any K/V is read), or hold none (bad while reading K/V).
  std::string load_error(int64_t context = 64, bool kept = true) {
    EngineRun l = make_run(*ckpt_, context, {});
    l.engine->prefill(std::vector<int32_t>{1, 2, 3});
    try {
      l.engine->load_kv(file_);
    } catch (const Error& e) {
      EXPECT_EQ(l.engine->n_past(), kept ? 3 : 0) << e.what();
      return e.what();
    }
    return "";
  }
  // file_ with its index JSON edited by `edit` and the header's version set to `version`, the index
  // and header checksums recomputed as a writer would: the checks behind them are what is tested.
  template <typename Edit>
  void rewrite_index(Edit&& edit, uint32_t version = 2) {
    std::vector<char> bytes(fs::file_size(file_));
    std::ifstream(file_, std::ios::binary).read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    uint64_t index_offset = 0;
    std::memcpy(&index_offset, bytes.data() + 16, 8);
    nlohmann::json index =
        nlohmann::json::parse(std::string(bytes.begin() + static_cast<std::ptrdiff_t>(index_offset), bytes.end()));
    edit(index);
    const std::string text = index.dump();
    bytes.resize(index_offset);
    bytes.insert(bytes.end(), text.begin(), text.end());
    const uint64_t index_bytes = text.size(), index_sum = kv_checksum(text.data(), text.size());
    std::memcpy(bytes.data() + 8, &version, 4);
    std::memcpy(bytes.data() + 24, &index_bytes, 8);
    std::memcpy(bytes.data() + 32, &index_sum, 8);
    const uint64_t header_sum = kv_checksum(bytes.data(), 40);
    std::memcpy(bytes.data() + 40, &header_sum, 8);
    std::ofstream(file_, std::ios::binary | std::ios::trunc)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  void flip_byte(uint64_t offset) {
    std::fstream f(file_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(offset));
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(static_cast<std::streamoff>(offset));
    f.write(&c, 1);
  }
  std::unique_ptr<Checkpoint> ckpt_;
  EngineRun run_;
  fs::path file_;
};

TEST_F(SnapshotErrors, WrongChecksumInAKvSection) {
  flip_byte(kKvSnapshotHeaderBytes + 41 * 4 + 1001);  // inside layer 0's K/V
  const std::string e = load_error(64, false);
  EXPECT_NE(e.find("checksum mismatch in section 'layer 0'"), std::string::npos) << e;
}

TEST_F(SnapshotErrors, TruncatedFile) {
  fs::resize_file(file_, fs::file_size(file_) - 100);
  EXPECT_NE(load_error().find("truncated"), std::string::npos) << load_error();
  fs::resize_file(file_, 20);
  EXPECT_NE(load_error().find("truncated"), std::string::npos) << load_error();
}

TEST_F(SnapshotErrors, NotASnapshotAndBadHeader) {
  flip_byte(0);
  EXPECT_NE(load_error().find("bad magic"), std::string::npos) << load_error();
  flip_byte(0);
  flip_byte(20);
  EXPECT_NE(load_error().find("header checksum"), std::string::npos) << load_error();
}

TEST_F(SnapshotErrors, AnotherModel) {
  auto other = Checkpoint::open(test::testdata_dir() / "models" / "tiny" / "llama2-f32");
  EngineRun l = make_run(*other, 64, {});
  try {
    l.engine->load_kv(file_);
    FAIL() << "loaded a snapshot of another model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("another model"), std::string::npos) << e.what();
  }
}

TEST_F(SnapshotErrors, LongerThanTheContext) {
  EXPECT_NE(load_error(40).find("do not fit the context"), std::string::npos) << load_error(40);
}

// Files of version 1 (before window layers: every layer from position 0, no layer_first) load:
// the fixture's file rewritten as version 1 continues exactly as the version 2 one.
TEST_F(SnapshotErrors, Version1FilesStillLoad) {
  EngineRun a = make_run(*ckpt_, 64, {}), b = make_run(*ckpt_, 64, {});
  a.engine->load_kv(file_);
  rewrite_index(
      [](nlohmann::json& index) {
        ASSERT_TRUE(index.contains("layer_first"));
        index.erase("layer_first");
      },
      1);
  b.engine->load_kv(file_);
  ASSERT_EQ(b.engine->n_past(), 41);
  const auto first = a.engine->decode(5);
  const std::vector<float> want(first.begin(), first.end());
  const auto got = b.engine->decode(5);
  EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float)));
}

// Numbers of the index that are floats, negative or past their integer's range are one clear
// error, never a cast: the fuzzer's finding was "positions" or a section's offset of 2.4e+49, which
// nlohmann's get<integer>() converts with undefined behaviour (UBSan: float-cast-overflow).
TEST_F(SnapshotErrors, IndexNumbersThatAreNotIntegersInRange) {
  struct Edit {
    std::string where;
    nlohmann::json value;
    std::string error;
  };
  const std::vector<Edit> edits = {
      {"/positions", 2.4e49, "bad index: positions is not an integer in range"},
      {"/positions", 41.0, "bad index: positions is not an integer in range"},
      {"/positions", -1, "do not fit the context"},
      {"/layer_first/0", 1e30, "bad index: layer_first is not an integer in range"},
      {"/sections/1/offset", 2.4e49, "bad index: section offset is not an integer in range"},
      {"/sections/1/bytes", -5, "bad index: section bytes is not an integer in range"},
      {"/sections/0/checksum", 7, "checksum mismatch in section 'ids'"}};
  const std::vector<char> original = [&] {
    std::vector<char> b(fs::file_size(file_));
    std::ifstream(file_, std::ios::binary).read(b.data(), static_cast<std::streamsize>(b.size()));
    return b;
  }();
  for (const Edit& edit : edits) {
    std::ofstream(file_, std::ios::binary | std::ios::trunc)
        .write(original.data(), static_cast<std::streamsize>(original.size()));
    rewrite_index([&](nlohmann::json& index) { index[nlohmann::json::json_pointer(edit.where)] = edit.value; });
    const std::string e = load_error();
    EXPECT_NE(e.find(edit.error), std::string::npos) << edit.where << " = " << edit.value.dump() << ": " << e;
  }
}

TEST_F(SnapshotErrors, SaveNeverLeavesAPartialFile) {
  const fs::path missing = fs::temp_directory_path() / "headinfer_no_such_dir" / "x.kv";
  EXPECT_THROW(run_.engine->save_kv(missing), Error);
  EXPECT_FALSE(fs::exists(missing.parent_path()));
  for (const auto& e : fs::directory_iterator(fs::temp_directory_path()))
    EXPECT_EQ(e.path().filename().string().find(file_.filename().string() + ".tmp"), std::string::npos);
}

TEST(ModelIdentity, DiffersForRandomCheckpointsOfOneShape) {
  const nlohmann::json config = {{"model_type", "llama"}, {"hidden_size", 64}, {"num_hidden_layers", 2},
                                 {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"intermediate_size", 96},
                                 {"vocab_size", 97}, {"max_position_embeddings", 128}};
  auto a = Checkpoint::random(config, DType::F32, 1);
  auto b = Checkpoint::random(config, DType::F32, 2);
  EXPECT_EQ(model_identity(*a), model_identity(*Checkpoint::random(config, DType::F32, 1)));
  EXPECT_NE(model_identity(*a), model_identity(*b));
}

// Memory the host must not touch: addresses far past anything mapped (a host read segfaults),
// readable only through read_to_host, as a GPU's memory is.
class UnmappedMemoryDevice : public Device {
 public:
  static constexpr uintptr_t kBase = uintptr_t{1} << 46;
  explicit UnmappedMemoryDevice(std::vector<unsigned char> bytes) : bytes_(std::move(bytes)) {}
  const void* address(size_t offset) const { return reinterpret_cast<const void*>(kBase + offset); }
  std::string name() const override { return "unmapped"; }
  Ops& ops() override { throw Error("unmapped device: no ops"); }
  void* alloc(size_t, const char*) override { throw Error("unmapped device: no alloc"); }
  void free(void*) override {}
  size_t bytes_in_use() const override { return 0; }
  size_t peak_bytes() const override { return 0; }
  void read_to_host(void* dst, const void* src, size_t n) override {
    const uintptr_t at = reinterpret_cast<uintptr_t>(src);
    ASSERT_TRUE(at >= kBase && at + n <= kBase + bytes_.size());
    std::memcpy(dst, bytes_.data() + (at - kBase), n);
    ++reads;
  }
  void write_from_host(void*, const void*, size_t) override { throw Error("unmapped device: read only"); }
  size_t memory_budget() const override { return 0; }
  std::unique_ptr<Transfer> make_transfer(const TransferOptions&) override { throw Error("unmapped device"); }
  DType kv_dtype(DType weight_dtype) const override { return weight_dtype; }
  int reads = 0;

 private:
  std::vector<unsigned char> bytes_;
};

// Weights used in place on a device (a torch model's CUDA tensors in the Python face) are sampled
// for the identity through the device: the same identity as the same bytes on the host, and no
// host read of a device address (that segfaulted HeadInferModel on the GPU).
TEST(ModelIdentity, ReadsDeviceTensorsThroughTheDevice) {
  const nlohmann::json config = {{"model_type", "llama"}, {"hidden_size", 64}, {"num_hidden_layers", 2},
                                 {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"intermediate_size", 96},
                                 {"vocab_size", 97}, {"max_position_embeddings", 128}};
  auto host = Checkpoint::random(config, DType::F32, 3);
  std::vector<unsigned char> bytes;
  std::vector<size_t> offsets;
  for (const TensorView* t : host->tensors()) {
    offsets.push_back(bytes.size());
    const auto* p = static_cast<const unsigned char*>(t->data);
    bytes.insert(bytes.end(), p, p + t->nbytes);
    bytes.resize((bytes.size() + 63) / 64 * 64);  // from_memory wants device tensors 64-byte aligned
  }
  UnmappedMemoryDevice device(bytes);
  std::vector<TensorView> views;
  size_t i = 0;
  for (const TensorView* t : host->tensors()) {
    TensorView v = *t;
    v.data = device.address(offsets[i++]);
    v.on_device = true;
    views.push_back(std::move(v));
  }
  auto on_device = Checkpoint::from_memory(config, nlohmann::json::object(), std::move(views), "unmapped");
  EXPECT_EQ(model_identity(*on_device, &device), model_identity(*host));
  EXPECT_EQ(device.reads, 2 * static_cast<int>(host->tensors().size()));
  EXPECT_THROW(model_identity(*on_device), Error);
}

TEST(KvChecksum, SeesEveryByteAndTheLength) {
  std::vector<unsigned char> bytes(1037);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i * 31 + 7);
  const uint64_t base = kv_checksum(bytes.data(), bytes.size());
  for (size_t i : {size_t{0}, size_t{31}, size_t{32}, size_t{1000}, size_t{1036}}) {
    bytes[i] ^= 1;
    EXPECT_NE(kv_checksum(bytes.data(), bytes.size()), base) << "byte " << i;
    bytes[i] ^= 1;
  }
  EXPECT_NE(kv_checksum(bytes.data(), bytes.size() - 1), base);
}

}  // namespace
}  // namespace headinfer
