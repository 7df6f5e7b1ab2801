// The offload KV cache on the GPU: the CUDA Transfer's copy streams and events carry the same
// pipeline the CPU tests check, so every placement must give the all-resident logits bit for bit
// (same kernels in the same order; the ring slot only changes where a head's keys are read from),
// the device pool must stay under the cap, and f32 checkpoints must pick the CPU's greedy ids.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "cuda_test_util.h"
#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/head_store.h"
#include "headinfer/model.h"
#include "model_set.h"
#include "placement_run.h"
#include "testdata.h"

namespace headinfer::test {
namespace {

namespace fs = std::filesystem;

DType weight_dtype(const Checkpoint& ckpt) {
  const TensorView* embed = ckpt.find("model.embed_tokens.weight");
  return embed != nullptr ? embed->dtype : DType::F32;
}

struct RunResult : test::PlacementRun {
  size_t device_budget = 0;
};

struct RunSpec {
  int64_t chunk = 7;
  int64_t n_decode = 4;
  bool cuda = true;
  KvPlacementOptions kv;  // kv.gpu_mem is the device's budget (0: the card's free memory)
};

// Model + the planned cache on a fresh device whose budget is the cap, as `generate` builds them.
RunResult run(const Checkpoint& ckpt, const std::vector<int32_t>& prompt, const RunSpec& spec) {
  auto device = spec.cuda ? make_cuda_device({0, static_cast<size_t>(spec.kv.gpu_mem)})
                          : make_cpu_device({0, static_cast<size_t>(spec.kv.gpu_mem)});
  KvPlacementOptions kv = spec.kv;
  kv.gpu_mem = static_cast<int64_t>(device->memory_budget());
  kv.kv_dtype = device->kv_dtype(weight_dtype(ckpt));
  RunResult r;
  static_cast<test::PlacementRun&>(r) = test::run_placement_on(*device, ckpt, prompt, spec.chunk, spec.n_decode, kv);
  r.device_budget = device->memory_budget();
  if (r.device_budget > 0) {
    EXPECT_LE(r.device_peak, r.device_budget) << "device pool over the cap";
  }
  // Nothing allocates on the device beyond what the planner counted (weights, activations and
  // the ops' reserved scratch, resident KV, ring).
  EXPECT_LE(static_cast<int64_t>(r.device_peak), r.plan.gpu_bytes_total) << "device peak beyond the plan";
  return r;
}

void expect_identical(const RunResult& ref, const RunResult& got, const std::string& what) {
  test::expect_bit_identical(ref, got, what);
}

int64_t prompt_length(int64_t chunk) {
  switch (chunk) {
    case 1: return 23;
    case 7: return 40;
    case 97: return 250;
    default: return chunk + 103;
  }
}

class GpuPlacements : public CudaTest, public ::testing::WithParamInterface<int64_t> {};

TEST_P(GpuPlacements, EveryPlacementIsBitIdenticalToAllResident) {
  HEADINFER_REQUIRE_TESTDATA();
  const int64_t chunk = GetParam();
  for (const fs::path& dir : all_models()) {
    int n_runs = 0;
    const std::string label = dir.filename().string() + " chunk " + std::to_string(chunk);
    SCOPED_TRACE(label);
    auto ckpt = Checkpoint::open(dir);
    const ModelConfig& c = ckpt->config();
    const auto prompt = random_prompt(prompt_length(chunk), c.vocab_size, 1234);
    RunSpec spec;
    spec.chunk = chunk;
    spec.kv.offload = OffloadMode::None;
    const RunResult ref = run(*ckpt, prompt, spec);
    ASSERT_EQ(ref.plan.n_streamed_groups, 0);

    // Every run builds a fresh device (its budget is the cap), so the sweep is kept to the cases
    // that differ: one head per group and the whole layer as one group.
    std::vector<int64_t> groups = {1, c.n_kv_heads};
    std::sort(groups.begin(), groups.end());
    groups.erase(std::unique(groups.begin(), groups.end()), groups.end());
    for (int64_t g : groups) {
      if (c.n_kv_heads % g != 0) continue;
      RunSpec s = spec;
      s.kv.offload = OffloadMode::All;
      s.kv.kv_group = g;
      const RunResult got = run(*ckpt, prompt, s);
      EXPECT_EQ(got.plan.n_resident_groups, 0);
      expect_identical(ref, got, "offload all, G " + std::to_string(g));
      ++n_runs;
    }

    // --offload auto under caps that leave 1 and about half of the head blocks resident (G = 1).
    // The fixed bytes are those of the all-resident run minus its KV.
    const int64_t context = static_cast<int64_t>(prompt.size()) + spec.n_decode;
    const int64_t fixed = ref.plan.weight_bytes + ref.plan.activation_bytes;
    const int64_t n_blocks = c.n_layers * c.n_kv_heads;
    KvPlacementOptions g1;
    g1.kv_group = 1;
    g1.kv_dtype = ref.plan.kv_elem_bytes == 4 ? DType::F32 : DType::BF16;
    for (auto [resident, cap] : test::resident_caps(c, fixed, context, chunk, {1, n_blocks / 2}, g1)) {
      RunSpec s = spec;
      s.kv.offload = OffloadMode::Auto;
      s.kv.kv_group = 1;
      s.kv.gpu_mem = cap;
      const RunResult got = run(*ckpt, prompt, s);
      EXPECT_EQ(got.plan.n_resident_groups, resident);
      EXPECT_GT(got.plan.n_streamed_groups, 0);
      expect_identical(ref, got, "offload auto, " + std::to_string(resident) + " resident");
      ++n_runs;
    }
    std::printf("[offload] %-28s kv %s, all-resident peak %zu B (plan %lld B): %d placements checked\n",
                label.c_str(), ref.plan.kv_elem_bytes == 4 ? "f32" : "bf16",
                ref.device_peak, static_cast<long long>(ref.plan.gpu_bytes_total), n_runs);
  }
}

INSTANTIATE_TEST_SUITE_P(Chunks, GpuPlacements, ::testing::Values(1, 97, 1500),
                         [](const auto& info) { return "chunk" + std::to_string(info.param); });

// f32 checkpoints through the streamed cache on the GPU pick the CPU's greedy ids.
TEST_F(CudaTest, F32StreamedGreedyMatchesCpu) {
  HEADINFER_REQUIRE_TESTDATA();
  int n_cases = 0;
  for (const fs::path& dir : all_models()) {
    const std::string name = dir.filename().string();
    auto ckpt = Checkpoint::open(dir);
    if (weight_dtype(*ckpt) != DType::F32) continue;
    std::vector<std::vector<int32_t>> prompts;
    if (name == "stories260k") {
      std::ifstream in(dir / "reference.json");
      for (const auto& c : nlohmann::json::parse(in)) prompts.push_back(c["prompt_ids"].get<std::vector<int32_t>>());
    } else {
      std::ifstream in(dir / "ref.json");
      const auto ref = nlohmann::json::parse(in);  // named: a range-for over parse(in)["cases"] dangles
      for (const auto& c : ref["cases"]) prompts.push_back(c["prompt_ids"].get<std::vector<int32_t>>());
    }
    for (size_t i = 0; i < prompts.size(); ++i) {
      RunSpec spec;
      spec.chunk = 64;
      spec.n_decode = 16;
      spec.kv.offload = OffloadMode::All;
      spec.kv.kv_group = 1;
      const RunResult gpu = run(*ckpt, prompts[i], spec);
      spec.cuda = false;
      spec.kv.offload = OffloadMode::None;
      const RunResult cpu = run(*ckpt, prompts[i], spec);
      EXPECT_EQ(gpu.tokens, cpu.tokens) << name << " case " << i;
      std::printf("[f32-greedy] %-20s case %zu prompt %zu: %s\n", name.c_str(), i, prompts[i].size(),
                  gpu.tokens == cpu.tokens ? "identical" : "DIFFERENT");
      ++n_cases;
    }
  }
  EXPECT_GE(n_cases, 8);
}

// Hybrid decode on the GPU with the device's KV dtype (bf16 for bf16 checkpoints): the CPU groups'
// new rows are rounded on the GPU, copied home, and attended whole by the host kernel after the
// copy's event; the GPU waits for the host result before o_proj. Prefill never uses the host path,
// so its logits are bit-identical; decode logits differ from the all-resident run by the host
// kernel's fp32 rounding against the GPU decode kernel's, carried through the remaining layers,
// plus the occasional bf16 rounding of a stored row to its neighbour (tests/kv/hybrid_test.cpp
// derives both; 1.5e-5 of max|logit| measured on the CPU backend): the same 1e-4 of max|logit|
// bound, and greedy tokens identical. run() also checks the staging buffer was in the plan.
TEST_F(CudaTest, HybridDecodeEqualsAllResident) {
  HEADINFER_REQUIRE_TESTDATA();
  constexpr double kLogitRtol = 1e-4;
  double worst_all = 0.0;
  for (const fs::path& dir : all_models()) {
    const std::string label = dir.filename().string();
    SCOPED_TRACE(label);
    auto ckpt = Checkpoint::open(dir);
    const ModelConfig& c = ckpt->config();
    const auto prompt = random_prompt(40, c.vocab_size, 4321);
    RunSpec spec;
    spec.n_decode = 12;
    spec.kv.offload = OffloadMode::None;
    const RunResult ref = run(*ckpt, prompt, spec);
    const int64_t n_host = c.n_layers * c.n_kv_heads;
    for (int64_t k : {n_host, n_host / 2}) {
      RunSpec s = spec;
      s.kv.offload = OffloadMode::All;
      s.kv.kv_group = 1;
      s.kv.hybrid = HybridMode::Auto;
      s.kv.cpu_groups = k;
      s.kv.host_threads = 2;
      const RunResult got = run(*ckpt, prompt, s);
      ASSERT_EQ(got.plan.n_cpu_groups, k);
      ASSERT_EQ(ref.logits.size(), got.logits.size());
      EXPECT_EQ(ref.tokens, got.tokens) << k << " groups on the CPU";
      const auto vocab = static_cast<size_t>(c.vocab_size);
      EXPECT_EQ(0, std::memcmp(ref.logits.data(), got.logits.data(), vocab * sizeof(float))) << "prefill logits";
      for (size_t row = 1; row < ref.logits.size() / vocab; ++row) {
        double scale = 0.0, diff = 0.0;
        for (size_t i = row * vocab; i < (row + 1) * vocab; ++i) {
          scale = std::max(scale, std::abs(static_cast<double>(ref.logits[i])));
          diff = std::max(diff, std::abs(static_cast<double>(ref.logits[i]) - got.logits[i]));
        }
        EXPECT_LE(diff / scale, kLogitRtol) << k << " groups on the CPU, decode step " << row;
        worst_all = std::max(worst_all, diff / scale);
      }
    }
  }
  std::printf("[hybrid] largest decode-logit difference %.3g of max|logit| (allowed %.0e)\n", worst_all, kLogitRtol);
}

// The engine as `generate` builds it on the GPU: bf16 checkpoints keep bf16 head blocks, f32 keep
// f32. With everything resident, the device holds the model plus exactly the KV of that dtype.
TEST_F(CudaTest, EngineChoosesKvDtypeFromDevice) {
  HEADINFER_REQUIRE_TESTDATA();
  for (const char* name : {"llama3-bf16", "llama3-f32"}) {
    auto ckpt = Checkpoint::open(testdata_dir() / "models" / "tiny" / name);
    const ModelConfig& c = ckpt->config();
    EngineOptions eo;
    eo.context = 64;
    eo.kv.offload = OffloadMode::None;
    size_t model_bytes = 0;
    {
      auto device = make_cuda_device({});
      // The planner takes a 64-token context in one chunk (checked below).
      Model model(*ckpt, *device, {eo.context, eo.context});
      model_bytes = device->bytes_in_use();
    }
    auto device = make_cuda_device({});
    eo.kv.gpu_mem = static_cast<int64_t>(device->memory_budget());
    Engine engine(*ckpt, *device, eo);
    EXPECT_EQ(engine.options().chunk, eo.context);
    EXPECT_EQ(engine.options().mlp_chunk, eo.context);
    const size_t elem = std::string(name).ends_with("f32") ? 4 : 2;
    const auto kv_bytes = static_cast<size_t>(c.n_layers * c.n_kv_heads * 2 * eo.context * c.head_dim) * elem;
    EXPECT_EQ(device->bytes_in_use(), model_bytes + kv_bytes) << name;
    const std::vector<int32_t> prompt = {1, 2, 3, 4, 5};
    auto logits = engine.prefill(prompt);
    EXPECT_TRUE(std::all_of(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); })) << name;
  }
}

// Weights already in device memory (what the Python face passes for a torch model on the GPU,
// Checkpoint::from_memory with on_device views) run in place through the whole Engine: nothing of
// the engine reads them on the host (the snapshot identity once did, a segfault in Python), no
// copy is made, and the ids are the folder-loaded engine's.
TEST_F(CudaTest, EngineRunsOnWeightsInDeviceMemory) {
  HEADINFER_REQUIRE_TESTDATA();
  for (const char* name : {"llama3-bf16", "qwen2-f32"}) {
    const fs::path dir = testdata_dir() / "models" / "tiny" / name;
    auto folder = Checkpoint::open(dir);
    const std::vector<int32_t> prompt = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    GenerateOptions go;
    go.max_new_tokens = 6;
    go.ignore_eos = true;
    EngineOptions eo;
    eo.context = 32;
    std::vector<int32_t> expected;
    size_t folder_growth = 0;
    {
      auto device = make_cuda_device({});
      eo.kv.gpu_mem = static_cast<int64_t>(device->memory_budget());
      const size_t before = device->bytes_in_use();
      Engine engine(*folder, *device, eo);
      folder_growth = device->bytes_in_use() - before;
      expected = generate(engine, prompt, go).tokens;
    }
    auto device = make_cuda_device({});
    std::vector<TensorView> views;
    std::vector<void*> blocks;
    size_t weight_bytes = 0;
    for (const TensorView* t : folder->tensors()) {
      TensorView v = *t;
      void* block = device->alloc(t->nbytes, "test weights");
      device->write_from_host(block, t->data, t->nbytes);
      v.data = block;
      v.on_device = true;
      blocks.push_back(block);
      weight_bytes += t->nbytes;
      views.push_back(std::move(v));
    }
    std::ifstream config_in(dir / "config.json");
    const auto config = nlohmann::json::parse(config_in);
    {
      auto in_place = Checkpoint::from_memory(config, nlohmann::json::object(), std::move(views), name);
      eo.kv.gpu_mem = static_cast<int64_t>(device->memory_budget());
      const size_t before = device->bytes_in_use();
      Engine engine(*in_place, *device, eo);
      EXPECT_EQ(engine.model().weights_in_place_bytes(), weight_bytes) << name;
      // The same plan less the uploaded weights: no second copy of them.
      EXPECT_LE(device->bytes_in_use() - before + weight_bytes, folder_growth) << name;
      EXPECT_EQ(generate(engine, prompt, go).tokens, expected) << name;
    }
    for (void* p : blocks) device->free(p);
  }
}

// Decode steps recorded as CUDA graphs (every head resident) give the logits the op-by-op run
// gives, bit for bit, and the device argmax picks the host sampler's token; the graph run must
// really have used graphs (a failed recording falls back silently otherwise).
TEST_F(CudaTest, StepGraphsAreBitIdenticalToOpByOp) {
  HEADINFER_REQUIRE_TESTDATA();
  for (const char* name : {"llama3-bf16", "qwen2-bf16", "mistral_swa-bf16", "qwen3-f32", "llama2-f32"}) {
    auto ckpt = Checkpoint::open(testdata_dir() / "models" / "tiny" / name);
    EngineOptions eo;
    eo.context = 1200;
    eo.chunk = 97;
    eo.kv.offload = OffloadMode::None;
    auto dev_a = make_cuda_device({}), dev_b = make_cuda_device({});
    eo.kv.gpu_mem = static_cast<int64_t>(dev_a->memory_budget());
    EngineOptions eo_b = eo;
    eo_b.step_graphs = false;
    eo_b.kv.gpu_mem = static_cast<int64_t>(dev_b->memory_budget());
    Engine graphs(*ckpt, *dev_a, eo), eager(*ckpt, *dev_b, eo_b);
    std::vector<int32_t> prompt(1000);
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 7919) % 97 + 3);
    auto la = graphs.prefill(prompt);
    auto lb = eager.prefill(prompt);
    int32_t id = headinfer::argmax(lb);
    // Long enough for the split-KV decode to change its number of splits on the way.
    for (int step = 0; step < 40; ++step) {
      const std::vector<float> a(la.begin(), la.end()), b(lb.begin(), lb.end());
      ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << name << " step " << step;
      if (step % 2 == 0) {
        const int32_t g = graphs.decode_greedy(id);
        lb = eager.decode(id);
        ASSERT_EQ(g, headinfer::argmax(lb)) << name << " step " << step;
        la = graphs.decode(g);  // keep both in step: one more position each
        lb = eager.decode(g);
        id = headinfer::argmax(lb);
      } else {
        la = graphs.decode(id);
        lb = eager.decode(id);
        id = headinfer::argmax(lb);
      }
    }
    EXPECT_TRUE(graphs.step_graphs()) << name << ": the graph recording failed and fell back";
    EXPECT_FALSE(eager.step_graphs());
  }
}

// The device argmax follows the host sampler's rule on ties and NaNs.
TEST_F(CudaTest, ArgmaxIsTheSamplersRule) {
  const float nan = std::nanf("");
  auto run = [&](const std::vector<float>& v) {
    auto d = upload(v);
    auto out = upload(std::vector<int32_t>{-1});
    gpu_->ops().argmax(view(d.data(), 1, static_cast<int64_t>(v.size()), static_cast<int64_t>(v.size())),
                       static_cast<int32_t*>(out.data()));
    int32_t r = -2;
    gpu_->read_to_host(&r, out.data(), sizeof(r));
    return r;
  };
  EXPECT_EQ(run({1, 3, 2, 3}), 1);
  EXPECT_EQ(run({-INFINITY, -INFINITY}), 0);
  EXPECT_EQ(run({0.0f, nan, 5.0f, 5.0f}), 2);
  EXPECT_EQ(run({nan, 7.0f, 9.0f}), 0);
  std::vector<float> big(128256);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<float>((i * 2654435761u) % 100003) * 1e-3f;
  big[77777] = 500.0f;
  big[120000] = 500.0f;
  EXPECT_EQ(run(big), 77777);
  EXPECT_EQ(run(big), headinfer::argmax(big));
  // The kernel's parts (elements before a 16-byte boundary, whole vectors, a tail) at every
  // alignment and a few lengths, the largest value twice: once late, once where another thread
  // (or another part) reads it. Against the host's rule.
  for (const int64_t n : {1, 2, 3, 5, 9, 4099, 128257}) {
    for (int64_t offset = 0; offset < 4; ++offset) {
      std::vector<float> v(static_cast<size_t>(n + offset));
      for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>((i * 40503u) % 9973) * 1e-2f;
      const int64_t late = n - 1, early = n / 3;
      v[static_cast<size_t>(offset + late)] = 1000.0f;
      v[static_cast<size_t>(offset + early)] = 1000.0f;
      auto d = upload(v);
      auto out = upload(std::vector<int32_t>{-1});
      gpu_->ops().argmax(view(static_cast<float*>(d.data()) + offset, 1, n, n), static_cast<int32_t*>(out.data()));
      int32_t r = -2;
      gpu_->read_to_host(&r, out.data(), sizeof(r));
      const std::span<const float> host(v.data() + offset, static_cast<size_t>(n));
      EXPECT_EQ(r, headinfer::argmax(host)) << "n " << n << " offset " << offset;
      EXPECT_EQ(r, early) << "n " << n << " offset " << offset;
    }
  }
}

}  // namespace
}  // namespace headinfer::test
