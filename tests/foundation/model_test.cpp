// End-to-end: greedy continuations and per-step logits of every tiny model and stories260k
// against Hugging Face transformers 5.17.
//
// References: the shared ref.json and ref_logits_<len>.npy of each tiny model (a plain
// transformers run: CPU, fp32, eager attention, every prompt token attended, argmax per step;
// ../shared/testdata/README.md). The first version of those files came from generate() with
// pad_token_id=0 and no mask; this project recomputed them then (same settings as the current
// files: greedy ids identical in all 42 cases, logits within 1.6e-6 of max|logit|), and the
// shared files now are such a run, so the tests read them directly.
//
// Logit tolerance. Our forward and torch's differ only in summation order and the last bit of
// exp/cos/sin. In fp32 (u = 2^-24 ~ 6e-8) a length-K reduction carries ~sqrt(K) u relative error;
// the longest here is attention over 1500 keys (~2.4e-6), and three layers with norms and
// residual adds compound a few of these. So |ours - ref| <= 1e-5 * max|ref| per step, measured
// at <= 1.6e-6.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <tuple>
#include <vector>
#include <nlohmann/json.hpp>

#include "headinfer/engine.h"
#include "headinfer/error.h"
#include "headinfer/kv_cache.h"
#include "headinfer/model.h"
#include "headinfer/random_model.h"
#include "greedy_run.h"
#include "npy.h"
#include "engine_options.h"
#include "decode_ahead_run.h"
#include "testdata.h"

namespace headinfer {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr float kLogitRtol = 1e-5f;

json read_json(const fs::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

fs::path tiny_dir(const std::string& name) { return test::testdata_dir() / "models" / "tiny" / name; }
json shared_reference(const std::string& arch) { return read_json(tiny_dir(arch + "-f32") / "ref.json"); }

using RunResult = test::GreedyRun;
using test::run_greedy;

std::vector<std::string> tiny_archs() {
  return {"llama2", "llama3", "mistral", "mistral_swa", "qwen2", "qwen2_yarn", "qwen3"};
}

class TinyModel : public ::testing::TestWithParam<std::string> {};

TEST_P(TinyModel, F32GreedyAndLogitsMatchTransformers) {
  HEADINFER_REQUIRE_TESTDATA();
  const std::string arch = GetParam();
  const json ref = shared_reference(arch);
  for (const json& c : ref["cases"]) {
    const auto prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    const auto want = c["greedy_f32"].get<std::vector<int32_t>>();
    const RunResult r = run_greedy(tiny_dir(arch + "-f32"), prompt, static_cast<int64_t>(want.size()));
    EXPECT_EQ(r.tokens, want) << arch << " prompt of " << prompt.size();
    test::expect_logits_near(r, tiny_dir(arch + "-f32") / ("ref_logits_" + std::to_string(prompt.size()) + ".npy"),
                             kLogitRtol, arch + "/" + std::to_string(prompt.size()));
  }
}

TEST_P(TinyModel, Bf16GreedyMatchesTransformersInFp32) {
  HEADINFER_REQUIRE_TESTDATA();
  const std::string arch = GetParam();
  const json ref = shared_reference(arch);
  for (const json& c : ref["cases"]) {
    const auto prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    const auto want = c["greedy_bf16"].get<std::vector<int32_t>>();
    const RunResult r = run_greedy(tiny_dir(arch + "-bf16"), prompt, static_cast<int64_t>(want.size()));
    EXPECT_EQ(r.tokens, want) << arch << " prompt of " << prompt.size();
  }
}

// Every op computes each row on its own, so how a prompt is cut into chunks cannot change a bit.
TEST_P(TinyModel, ChunkSizeDoesNotChangeLogits) {
  HEADINFER_REQUIRE_TESTDATA();
  const std::string arch = GetParam();
  const auto prompt = shared_reference(arch)["cases"][1]["prompt_ids"].get<std::vector<int32_t>>();
  const fs::path dir = tiny_dir(arch + "-f32");
  const RunResult whole = run_greedy(dir, prompt, 4);  // the planner's chunk: the whole prompt
  for (int64_t chunk : {1, 7, 60}) {
    const RunResult r = run_greedy(dir, prompt, 4, chunk);
    EXPECT_EQ(r.tokens, whole.tokens);
    for (size_t s = 0; s < r.logits.size(); ++s) EXPECT_EQ(r.logits[s], whole.logits[s]) << "chunk " << chunk;
  }
}

INSTANTIATE_TEST_SUITE_P(AllArchitectures, TinyModel, ::testing::ValuesIn(tiny_archs()));

TEST(Stories260k, GreedyIdsMatchReference) {
  HEADINFER_REQUIRE_TESTDATA();
  const fs::path dir = test::testdata_dir() / "models/stories260k";
  const json ref = read_json(dir / "reference.json");
  ASSERT_FALSE(ref.empty());
  for (const json& c : ref) {
    const auto prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    const auto want = c["greedy_ids"].get<std::vector<int32_t>>();
    const RunResult r = run_greedy(dir, prompt, static_cast<int64_t>(want.size()));
    EXPECT_EQ(r.tokens, want) << "prompt '" << c["prompt"].get<std::string>() << "'";
  }
}

// Greedy decoding with the argmax taken by the device picks what the host sampler picks from the
// logits of the same step.
TEST(Generate, DeviceArgmaxEqualsHostArgmax) {
  HEADINFER_REQUIRE_TESTDATA();
  const auto ckpt = Checkpoint::open(test::testdata_dir() / "models/tiny" / "llama3-f32");
  auto device = make_cpu_device({2, 0});
  Engine a(*ckpt, *device, context_of(40, 512)), b(*ckpt, *device, context_of(40, 512));
  const std::vector<int32_t> prompt{1, 5, 9, 200, 3};
  int32_t ia = argmax(a.prefill(prompt)), ib = argmax(b.prefill(prompt));
  ASSERT_EQ(ia, ib);
  for (int i = 0; i < 16; ++i) {
    ia = argmax(a.decode(ia));
    ib = b.decode_greedy(ib);
    ASSERT_EQ(ia, ib) << "step " << i;
  }
  EXPECT_FALSE(b.step_graphs());  // the CPU device has no graphs
}

// decode_greedy's `ahead` changes no bit, counted or dropped (decode_ahead_run.h).
TEST(Engine, DecodeAheadChangesNoBit) {
  HEADINFER_REQUIRE_TESTDATA();
  for (const char* arch : {"llama3-f32", "mistral_swa-f32"}) {
    const auto ckpt = Checkpoint::open(tiny_dir(arch));
    auto device = make_cpu_device({2, 0});
    test::check_decode_ahead(*ckpt, *device, *device, arch, false);
  }
}

TEST(Generate, StopsAtEosUnlessIgnored) {
  HEADINFER_REQUIRE_TESTDATA();
  // The tiny llama3 (bf16 file)'s first reference continuation reaches its eos id (2) at step 22.
  const json ref = shared_reference("llama3")["cases"][0];
  const auto prompt = ref["prompt_ids"].get<std::vector<int32_t>>();
  const auto full = ref["greedy_bf16"].get<std::vector<int32_t>>();
  const auto eos_at = std::find(full.begin(), full.end(), 2) - full.begin();
  ASSERT_LT(eos_at, static_cast<long>(full.size()));
  auto ckpt = Checkpoint::open(tiny_dir("llama3-bf16"));
  ASSERT_EQ(ckpt->config().eos_token_ids, (std::vector<int64_t>{2}));
  auto device = make_cpu_device({});
  Engine engine(*ckpt, *device, context_of(64, 512));
  GenerateOptions go;
  go.max_new_tokens = static_cast<int64_t>(full.size());
  const GenerateResult r = generate(engine, prompt, go);
  EXPECT_TRUE(r.stopped_at_eos);
  EXPECT_EQ(r.tokens, std::vector<int32_t>(full.begin(), full.begin() + eos_at + 1));
}

TEST(Generate, PromptLongerThanContextIsAClearError) {
  HEADINFER_REQUIRE_TESTDATA();
  auto ckpt = Checkpoint::open(test::testdata_dir() / "models/stories260k");
  auto device = make_cpu_device({});
  Engine engine(*ckpt, *device, context_of(4, 512));
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5};
  try {
    generate(engine, prompt, GenerateOptions{});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not fit the context"), std::string::npos) << e.what();
  }
}

TEST(Generate, TokenOutsideVocabularyIsAClearError) {
  HEADINFER_REQUIRE_TESTDATA();
  auto ckpt = Checkpoint::open(test::testdata_dir() / "models/stories260k");
  auto device = make_cpu_device({});
  Engine engine(*ckpt, *device, context_of(16, 512));
  const std::vector<int32_t> prompt = {1, 100000};
  EXPECT_THROW(generate(engine, prompt, GenerateOptions{}), Error);
}

// EngineOptions::prompt_tokens only plans work ahead (Engine copies the weights after planning the
// first chunk): with the prompt's length, another length, or none, every logit is the same, on a
// model with sliding-window layers and one without, whole-prompt and chunked.
TEST(Engine, PromptHintChangesNoBit) {
  HEADINFER_REQUIRE_TESTDATA();
  for (const char* arch : {"llama3-f32", "mistral_swa-f32"}) {
    const auto ckpt = Checkpoint::open(tiny_dir(arch));
    auto device = make_cpu_device({2, 0});
    std::vector<int32_t> prompt;
    for (int32_t i = 0; i < 37; ++i) prompt.push_back(1 + (i * 7) % 200);
    for (int64_t chunk : {0, 16}) {
      std::vector<std::vector<float>> logits;
      std::vector<std::vector<int32_t>> greedy;
      for (int64_t hint : {0, 37, 5, 1000}) {
        EngineOptions eo = context_of(48, chunk);
        eo.prompt_tokens = hint;
        Engine e(*ckpt, *device, eo);
        const auto l = e.prefill(prompt);
        logits.emplace_back(l.begin(), l.end());
        std::vector<int32_t> ids{argmax(l)};
        for (int i = 0; i < 6; ++i) ids.push_back(e.decode_greedy(ids.back()));
        greedy.push_back(ids);
      }
      for (size_t k = 1; k < logits.size(); ++k) {
        EXPECT_EQ(logits[k], logits[0]) << arch << " chunk " << chunk << " hint case " << k;
        EXPECT_EQ(greedy[k], greedy[0]) << arch << " chunk " << chunk << " hint case " << k;
      }
    }
  }
}

// The CPU's ops, with every linear a forward runs and every one prepare_linear is asked to plan
// recorded: input (memory, dtype, shape, stride) and each output (weight, bias, memory, shape,
// accumulate). With `fold` set they also say yes to linear_accumulates() for chunks over 8 rows, as
// the CUDA backend's HEADINFER_RESIDUAL_GEMM does, and add such a product into y after computing it
// with the CPU's linear(): the arithmetic of linear() then add().
class RecordingOps final : public Ops {
 public:
  explicit RecordingOps(Ops& cpu) : cpu_(cpu) {}
  using Call = std::vector<std::tuple<const void*, DType, int64_t, int64_t, int64_t, const void*, const void*,
                                      const void*, int64_t, int64_t, int64_t, bool>>;
  std::vector<Call> run, prepared;
  bool fold = false;

  bool linear_accumulates(int64_t n, DType) const override { return fold && n > 8; }

  void linear(const MatView& x, const WeightView& w, const VecView* bias, const MatView& y) override {
    const LinearOut o{&w, bias, y};
    run.push_back(record(x, std::span<const LinearOut>(&o, 1)));
    cpu_.linear(x, w, bias, y);
  }
  void linear_multi(const MatView& x, std::span<const LinearOut> outs) override {
    run.push_back(record(x, outs));
    for (const LinearOut& o : outs) {
      if (!o.accumulate) {
        cpu_.linear(x, *o.w, o.bias, o.y);
        continue;
      }
      EXPECT_TRUE(fold && x.rows > 8 && o.bias == nullptr) << "an accumulate the ops did not offer";
      std::vector<float> product(static_cast<size_t>(o.y.rows * o.y.cols));
      const MatView p{product.data(), DType::F32, o.y.rows, o.y.cols, o.y.cols};
      cpu_.linear(x, *o.w, nullptr, p);
      cpu_.add(o.y, p);
    }
  }
  void prepare_linear(const MatView& x, std::span<const LinearOut> outs) override {
    prepared.push_back(record(x, outs));
  }
  void embedding(std::span<const int32_t> ids, const WeightView& t, const MatView& out) override {
    cpu_.embedding(ids, t, out);
  }
  void embedding_device_id(const int32_t* id, const WeightView& t, const MatView& out) override {
    cpu_.embedding_device_id(id, t, out);
  }
  void rms_norm(const MatView& x, const VecView& w, float eps, const MatView& out) override {
    cpu_.rms_norm(x, w, eps, out);
  }
  void add_rms_norm(const MatView& x, const MatView& y, const VecView& w, float eps, const MatView& out) override {
    cpu_.add_rms_norm(x, y, w, eps, out);
  }
  DType linear_input_dtype(int64_t n, DType w) const override { return cpu_.linear_input_dtype(n, w); }
  void rope(const MatView& x, int64_t h, const RopeTable& r, int64_t pos0) override { cpu_.rope(x, h, r, pos0); }
  void attention(const AttentionArgs& a) override { cpu_.attention(a); }
  void attention_merge(const MatView& oa, const MatView& la, const MatView& ob, const MatView& lb,
                       int64_t d) override {
    cpu_.attention_merge(oa, la, ob, lb, d);
  }
  void silu_mul(const MatView& g, const MatView& u, const MatView& out) override { cpu_.silu_mul(g, u, out); }
  void gelu_tanh_mul(const MatView& g, const MatView& u, const MatView& out) override {
    cpu_.gelu_tanh_mul(g, u, out);
  }
  void scale(const MatView& x, float s) override { cpu_.scale(x, s); }
  void softcap(const MatView& x, float cap) override { cpu_.softcap(x, cap); }
  void add(const MatView& x, const MatView& y) override { cpu_.add(x, y); }
  void copy(const MatView& src, const MatView& dst) override { cpu_.copy(src, dst); }
  void copy_heads(const MatView& src, int64_t n, const MatView& dst, int64_t stride) override {
    cpu_.copy_heads(src, n, dst, stride);
  }
  void argmax(const MatView& x, int32_t* out) override { cpu_.argmax(x, out); }
  void reserve_workspace(const OpsWorkspaceSizes& s) override { cpu_.reserve_workspace(s); }
  void release_workspace() override { cpu_.release_workspace(); }

 private:
  static Call record(const MatView& x, std::span<const LinearOut> outs) {
    Call c;
    for (const LinearOut& o : outs)
      c.emplace_back(x.data, x.dtype, x.rows, x.cols, x.row_stride, o.w->data, o.bias != nullptr ? o.bias->data : nullptr,
                     o.y.data, o.y.rows, o.y.cols, o.y.row_stride, o.accumulate);
    return c;
  }
  Ops& cpu_;
};

// The CPU device with RecordingOps in place of its ops.
class RecordingDevice final : public Device {
 public:
  RecordingDevice() : cpu_(make_cpu_device({})), ops_(cpu_->ops()) {}
  RecordingOps& recorder() { return ops_; }
  std::string name() const override { return cpu_->name(); }
  Ops& ops() override { return ops_; }
  void* alloc(size_t bytes, const char* what) override { return cpu_->alloc(bytes, what); }
  void free(void* p) override { cpu_->free(p); }
  size_t bytes_in_use() const override { return cpu_->bytes_in_use(); }
  size_t peak_bytes() const override { return cpu_->peak_bytes(); }
  void read_to_host(void* dst, const void* src, size_t n) override { cpu_->read_to_host(dst, src, n); }
  void write_from_host(void* dst, const void* src, size_t n) override { cpu_->write_from_host(dst, src, n); }
  size_t memory_budget() const override { return cpu_->memory_budget(); }
  std::unique_ptr<Transfer> make_transfer(const TransferOptions& o) override { return cpu_->make_transfer(o); }
  DType kv_dtype(DType w) const override { return cpu_->kv_dtype(w); }

 private:
  std::unique_ptr<Device> cpu_;
  RecordingOps ops_;
};

// Model::prepare_first_chunk plans exactly the linears the first forward runs, in its order, with
// its memory (the CUDA backend's plans are keyed by shape, strides and alignment): q/k/v, o_proj,
// each MLP sub-chunk's gate/up and down, lm_head. Biased q/k/v (qwen2) and a prompt cut into
// three MLP sub-chunks, the last one short.
TEST(Model, PrepareFirstChunkPlansTheFirstForwardsLinears) {
  for (bool fold : {false, true})
  for (const char* type : {"llama", "qwen2"}) {
    const nlohmann::json config = {{"model_type", type},        {"hidden_size", 64},      {"num_hidden_layers", 2},
                                   {"num_attention_heads", 4},  {"num_key_value_heads", 2}, {"intermediate_size", 96},
                                   {"vocab_size", 97},          {"max_position_embeddings", 128}};
    auto ckpt = Checkpoint::random(config, DType::F32, 5);
    RecordingDevice device;
    device.recorder().fold = fold;
    const ForwardWorkspaceSizes sizes{40, 16};
    Model model(*ckpt, device, sizes, ModelShard{}, true);
    auto kv = make_simple_kv_cache(device, ckpt->config(), 64);
    const int64_t n = 37;
    model.prepare_first_chunk(n);
    model.copy_weights();
    std::vector<int32_t> ids;
    for (int32_t i = 0; i < n; ++i) ids.push_back(1 + (i * 5) % 90);
    model.forward(ids, 0, *kv);
    RecordingOps& r = device.recorder();
    EXPECT_EQ(r.prepared.size(), 2 * (2 + 2 * 3) + 1u) << type;  // per layer q/k/v, o, 3 x (gate/up, down); lm_head
    EXPECT_EQ(r.prepared, r.run) << type;
    if (std::string(type) == "qwen2") {
      EXPECT_NE(std::get<6>(r.run.at(0).at(0)), nullptr);  // q's bias recorded
    }
    // Folded: o_proj of the 37 rows and down of the two 16-row sub-chunks per layer; the last
    // sub-chunk's 5 rows are the GEMV's, not folded.
    size_t folded = 0;
    for (const auto& call : r.run)
      for (const auto& o : call) folded += std::get<11>(o) ? 1 : 0;
    EXPECT_EQ(folded, fold ? 2u * (1 + 2) : 0u) << type;
  }
}

// The residual added in the linear (LinearOut::accumulate, where the ops offer it) gives the
// forward of the plain residual add bit for bit, when the ops' product-then-add is linear() then
// add(): prefill chunks over and under the 8-row line, sub-chunked MLPs, the last layer (no next
// norm), decode steps. A model with o_proj bias or sandwich norms keeps the plain path.
TEST(Model, FoldedResidualGivesThePlainForward) {
  for (const char* type : {"llama", "qwen2", "gemma2"}) {
    const nlohmann::json config = {{"model_type", type},        {"hidden_size", 64},      {"num_hidden_layers", 3},
                                   {"num_attention_heads", 4},  {"num_key_value_heads", 2}, {"intermediate_size", 96},
                                   {"vocab_size", 97},          {"max_position_embeddings", 128}, {"head_dim", 16}};
    auto ckpt = Checkpoint::random(config, DType::F32, 11);
    auto run = [&](bool fold, size_t* folded) {
      RecordingDevice device;
      device.recorder().fold = fold;
      Model model(*ckpt, device, ForwardWorkspaceSizes{40, 16});
      auto kv = make_simple_kv_cache(device, ckpt->config(), 96);
      std::vector<float> logits(97), all;
      int64_t pos = 0;
      for (int64_t n : {37, 5, 12, 1, 1}) {
        std::vector<int32_t> ids;
        for (int64_t i = 0; i < n; ++i) ids.push_back(static_cast<int32_t>(1 + (pos + i) * 7 % 90));
        model.forward(ids, pos, *kv, logits);
        all.insert(all.end(), logits.begin(), logits.end());
        pos += n;
      }
      *folded = 0;
      for (const auto& call : device.recorder().run)
        for (const auto& o : call) *folded += std::get<11>(o) ? 1 : 0;
      return all;
    };
    size_t plain_folded = 0, folded = 0;
    const auto plain = run(false, &plain_folded), fold = run(true, &folded);
    EXPECT_EQ(plain_folded, 0u);
    ASSERT_EQ(plain.size(), fold.size());
    EXPECT_EQ(0, std::memcmp(plain.data(), fold.data(), plain.size() * sizeof(float))) << type;
    // gemma2's sandwich norms keep the plain path; the others fold o_proj and down of the chunks
    // over 8 rows (37: o_proj and two 16-row down sub-chunks; 12: o_proj and down) in each layer.
    EXPECT_EQ(folded, std::string(type) == "gemma2" ? 0u : 3u * (3 + 2)) << type;
  }
}

TEST(RandomModel, BuiltInTinyShapeRoundTripsThroughTheLoader) {
  const fs::path dir = fs::temp_directory_path() / "headinfer_random_tiny";
  fs::remove_all(dir);
  write_random_checkpoint(dir, builtin_shape_config("tiny"), DType::BF16, 7);
  auto ckpt = Checkpoint::open(dir);
  auto device = make_cpu_device({});
  const std::vector<int32_t> prompt = {1, 5, 9};
  EngineOptions eo;
  eo.context = 16;
  Engine a(*ckpt, *device, eo), b(*ckpt, *device, eo);
  GenerateOptions go;
  go.max_new_tokens = 8;
  go.ignore_eos = true;
  const auto ra = generate(a, prompt, go), rb = generate(b, prompt, go);
  EXPECT_EQ(ra.tokens.size(), 8u);
  EXPECT_EQ(ra.tokens, rb.tokens);  // deterministic
  fs::remove_all(dir);
}

}  // namespace
}  // namespace headinfer
