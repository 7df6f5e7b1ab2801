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
