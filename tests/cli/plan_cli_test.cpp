// `headinfer plan` run as a process: --device picks the device whose link is measured (and cached
// under its name, the key generate's planned cache uses) and whose KV dtype is planned; --shape
// plans a built-in shape; bad flags are one line on stderr and exit status 1.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace {

namespace fs = std::filesystem;

struct CliResult {
  int status = -1;  // exit status; -1 when the process did not exit normally
  std::string out;
  std::string err;
};

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A scratch folder per test: the bandwidth cache ($XDG_CACHE_HOME) and the captured streams.
class PlanCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("headinfer-plan-cli-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs `headinfer plan ARGS` with the cache in this test's folder.
  CliResult plan(const std::string& args) {
    const fs::path out = dir_ / "stdout", err = dir_ / "stderr";
    const std::string cmd = "XDG_CACHE_HOME='" + (dir_ / "cache").string() + "' '" HEADINFER_CLI "' plan " + args +
                            " >'" + out.string() + "' 2>'" + err.string() + "'";
    const int raw = std::system(cmd.c_str());
    CliResult r;
    r.status = raw != -1 && WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    r.out = read_text(out);
    r.err = read_text(err);
    return r;
  }

  nlohmann::json cache_file() { return nlohmann::json::parse(read_text(dir_ / "cache" / "headinfer" / "bandwidth.json")); }

  fs::path dir_;
};

constexpr const char* kTiny = "--shape tiny --ctx 1500 --gpu-mem 1GiB --host-mem 1GiB --hybrid off --json";

TEST_F(PlanCli, DeviceCpuMeasuresItsOwnLinkOnceAndCachesItUnderItsName) {
  const CliResult first = plan(std::string(kTiny) + " --device cpu -t 1");
  ASSERT_EQ(first.status, 0) << first.err;
  const nlohmann::json j = nlohmann::json::parse(first.out);
  // The CPU device's name is the key make_planned_kv_cache caches the link under.
  EXPECT_EQ(j["device"], "cpu (1 threads)");
  EXPECT_GT(j["link_gbps"].get<double>(), 0.0);
  EXPECT_EQ(j["link_gbps_source"].get<std::string>().rfind("measured", 0), 0u) << j["link_gbps_source"];
  // The CPU device keeps F32 KV whatever the weights are, so the plan does too.
  EXPECT_EQ(j["kv_elem_bytes"], 4);
  EXPECT_EQ(j["weight_elem_bytes"], 2);
  EXPECT_EQ(j["kv_bytes_per_token"], 2 * 2 * 2 * 16 * 4);  // K+V x layers x kv heads x head_dim x 4 B
  const nlohmann::json cache = cache_file();
  ASSERT_TRUE(cache.contains("link: cpu (1 threads)")) << cache.dump();
  EXPECT_DOUBLE_EQ(cache["link: cpu (1 threads)"].get<double>(), j["link_gbps"].get<double>());
  EXPECT_FALSE(cache.contains("link: cpu copy worker"));

  // The second plan reads the cached rate instead of measuring again.
  const CliResult second = plan(std::string(kTiny) + " --device cpu -t 1");
  ASSERT_EQ(second.status, 0) << second.err;
  const nlohmann::json k = nlohmann::json::parse(second.out);
  EXPECT_EQ(k["link_gbps_source"].get<std::string>().rfind("cached in", 0), 0u) << k["link_gbps_source"];
  EXPECT_DOUBLE_EQ(k["link_gbps"].get<double>(), j["link_gbps"].get<double>());

  // Another thread count is another device name, so another key, measured on its own.
  const CliResult other = plan(std::string(kTiny) + " --device cpu -t 2");
  ASSERT_EQ(other.status, 0) << other.err;
  EXPECT_EQ(nlohmann::json::parse(other.out)["device"], "cpu (2 threads)");
  EXPECT_TRUE(cache_file().contains("link: cpu (2 threads)"));
}

TEST_F(PlanCli, LinkFlagSkipsTheProbeAndTheTableNamesDeviceAndSource) {
  const CliResult r = plan("--shape tiny --ctx 1500 --gpu-mem 1GiB --host-mem 1GiB --hybrid off --device cpu -t 1 "
                           "--link-gbps 12.5");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("cpu (1 threads)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("12.50 GB/s (--link-gbps)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("the device's KV dtype for bfloat16 weights"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "cache" / "headinfer" / "bandwidth.json"));
}

TEST_F(PlanCli, UnknownDeviceIsOneLineAndExitOne) {
  const CliResult r = plan(std::string(kTiny) + " --device tpu");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "error: --device: 'tpu' is not cpu, cuda or auto\n");
  EXPECT_EQ(r.out, "");
}

#ifndef HEADINFER_CLI_HAS_CUDA
TEST_F(PlanCli, DeviceCudaOnACpuBuildIsOneLine) {
  const CliResult r = plan(std::string(kTiny) + " --device cuda");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err.rfind("error: --device cuda: this build has no CUDA backend", 0), 0u) << r.err;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
  EXPECT_EQ(r.out, "");
}

TEST_F(PlanCli, DeviceAutoOnACpuBuildIsTheCpu) {
  const CliResult r = plan(std::string(kTiny) + " -t 1 --link-gbps 10");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["device"], "cpu (1 threads)");
}
#endif

// Issue 14: the new families' shapes plan at 128K and 1M under a 24 GiB cap (bf16 KV, a host with
// 1 TiB). KV per token of every layer: gemma2-9b 2 * 42 layers * 8 kv heads * 256 * 2 B = 336 KiB
// (its 21 window layers then keep only their window: PublishedConfigsAt128KAnd1M);
// phi3.5-mini 2 * 32 * 32 * 96 * 2 B = 384 KiB.
TEST_F(PlanCli, BuiltinFamilyShapesAt128KAnd1M) {
  for (const auto& [shape, per_token] : {std::pair{"gemma2-9b", int64_t{336} << 10}, std::pair{"phi3.5-mini", int64_t{384} << 10}})
    for (const std::string ctx : {"128K", "1M"}) {
      const CliResult r = plan("--shape " + std::string(shape) + " --ctx " + ctx +
                               " --gpu-mem 24GiB --host-mem 1TiB --hybrid off --link-gbps 50 --device cpu -t 1 "
                               "--kv-dtype bf16 --json");
      ASSERT_EQ(r.status, 0) << shape << " " << ctx << ": " << r.err;
      const nlohmann::json j = nlohmann::json::parse(r.out);
      EXPECT_TRUE(j["fits"].get<bool>()) << shape << " " << ctx;
      EXPECT_EQ(j["kv_bytes_per_token"], per_token) << shape;
      EXPECT_LE(j["gpu_bytes_total"].get<int64_t>(), int64_t{24} << 30) << shape << " " << ctx;
    }
}

// Issue 14: the published configs of tests/data/configs (see SOURCE.md there) parse and plan at
// 128K and 1M under a 24 GiB cap (bf16 KV, 1 TiB of host), and the window layers count at their
// window: kv_bytes_total = kv_bytes_full - window_saved_bytes, with the saving as the configs say.
//  - gemma-2-9b: 21 of 42 layers local, window 4096; a local layer keeps 2 * 4095 + C positions, so
//    the KV is the 21 global layers' and a little more: just over half of the all-global figure.
//  - gemma-3-4b (text): 29 of 34 layers local, window 1024: about the 5 global layers' share.
//  - Phi-3.5-mini: its sliding_window 262144 (every layer, as transformers' phi3 mask) trims
//    nothing at 128K and keeps between a quarter (host rings: W - 1 + C positions and a slab) and
//    half (resident blocks: 2 (W - 1) + C) of 1M.
//  - Mistral-Nemo: no window, nothing saved.
TEST_F(PlanCli, PublishedConfigsAt128KAnd1M) {
  struct Expect {
    const char* dir;
    int64_t window_layers_128k, window_layers_1m;
    double lo_128k, hi_128k, lo_1m, hi_1m;  // kv_bytes_total / kv_bytes_full
  };
  const Expect expects[] = {
      {"gemma-2-9b-it", 21, 21, 0.5, 0.6, 0.5, 0.52},
      {"gemma-3-4b-text", 29, 29, 5.0 / 34, 0.3, 5.0 / 34, 0.2},
      {"Phi-3.5-mini-instruct", 0, 32, 1.0, 1.0, 0.25, 0.54},
      {"Mistral-Nemo-Instruct-2407", 0, 0, 1.0, 1.0, 1.0, 1.0},
  };
  const fs::path configs = fs::path(HEADINFER_SOURCE_DIR) / "tests" / "data" / "configs";
  for (const Expect& e : expects)
    for (const std::string ctx : {"128K", "1M"}) {
      SCOPED_TRACE(std::string(e.dir) + " at " + ctx);
      const CliResult r = plan("--config '" + (configs / e.dir / "config.json").string() + "' --ctx " + ctx +
                               " --gpu-mem 24GiB --host-mem 1TiB --hybrid off --link-gbps 50 --device cpu -t 1 "
                               "--kv-dtype bf16 --json");
      ASSERT_EQ(r.status, 0) << r.err;
      const nlohmann::json j = nlohmann::json::parse(r.out);
      EXPECT_TRUE(j["fits"].get<bool>()) << j["message"];
      EXPECT_LE(j["gpu_bytes_total"].get<int64_t>(), int64_t{24} << 30);
      const auto full = j["kv_bytes_full"].get<int64_t>(), total = j["kv_bytes_total"].get<int64_t>();
      EXPECT_EQ(full, j["kv_bytes_per_token"].get<int64_t>() * j["context"].get<int64_t>());
      EXPECT_EQ(total + j["window_saved_bytes"].get<int64_t>(), full);
      EXPECT_EQ(j["kv_bytes_gpu"].get<int64_t>() + j["kv_bytes_host"].get<int64_t>(), total);
      const bool big = ctx == "1M";
      EXPECT_EQ(j["n_window_layers"], big ? e.window_layers_1m : e.window_layers_128k);
      const double ratio = static_cast<double>(total) / static_cast<double>(full);
      EXPECT_GE(ratio, big ? e.lo_1m : e.lo_128k);
      EXPECT_LE(ratio, big ? e.hi_1m : e.hi_128k);
    }

  // The table says it too: the window layers and the bytes the window saves (the --json figure).
  const std::string args = "--config '" + (configs / "gemma-2-9b-it").string() +
                           "' --ctx 128K --gpu-mem 24GiB --host-mem 1TiB --hybrid off --link-gbps 50 --device cpu -t 1 "
                           "--kv-dtype bf16 --chunk 2048";
  const CliResult t = plan(args);
  ASSERT_EQ(t.status, 0) << t.err;
  const CliResult tj = plan(args + " --json");
  ASSERT_EQ(tj.status, 0) << tj.err;
  const auto saved = nlohmann::json::parse(tj.out)["window_saved_bytes"].get<int64_t>();
  EXPECT_GT(saved, int64_t{18} << 30);
  EXPECT_NE(t.out.find("21 of 42 keep their window of 4096 (10238 positions per resident head block)"),
            std::string::npos)
      << t.out;
  const size_t line = t.out.find("KV the window saves");
  ASSERT_NE(line, std::string::npos) << t.out;
  std::string saved_cell = "(";  // appended, not "(" + string: GCC 12 warns a false -Wrestrict on that
  saved_cell += std::to_string(saved);
  saved_cell += " B) of 42.00 GiB";
  EXPECT_NE(t.out.find(saved_cell, line), std::string::npos) << t.out;
}

// Issue 6's question on its own numbers: 1M tokens of llama3-8b (128 KiB per token of bf16 KV)
// under a 24 GiB cap on a host with 128 GiB.
TEST_F(PlanCli, BuiltinShapeLlama3At1M) {
  const std::string base = "--shape llama3-8b --ctx 1M --gpu-mem 24GiB --host-mem 128GiB --hybrid off --link-gbps 50 "
                           "--device cpu -t 1 --json";
  const CliResult bf16 = plan(base + " --kv-dtype bf16");
  ASSERT_EQ(bf16.status, 0) << bf16.err;
  const nlohmann::json j = nlohmann::json::parse(bf16.out);
  EXPECT_TRUE(j["fits"].get<bool>());
  EXPECT_EQ(j["source"], "shape llama3-8b (bf16 weights)");
  EXPECT_EQ(j["kv_bytes_per_token"], 128 * 1024);
  EXPECT_EQ(j["kv_bytes_total"], int64_t{128} << 30);
  EXPECT_EQ(j["kv_bytes_gpu"].get<int64_t>() + j["kv_bytes_host"].get<int64_t>(), int64_t{128} << 30);
  EXPECT_LE(j["gpu_bytes_total"].get<int64_t>(), int64_t{24} << 30);
  EXPECT_GT(j["n_resident_groups"].get<int64_t>(), 0);  // the cap's room left by the weights holds KV
  // The planner chose the prefill chunk (issue 11) and says why; --chunk overrides it.
  EXPECT_GE(j["chunk"].get<int64_t>(), 512);
  EXPECT_NE(j["chunk_reason"].get<std::string>().find("chosen"), std::string::npos) << j["chunk_reason"];
  const CliResult given = plan(base + " --kv-dtype bf16 --chunk 512");
  ASSERT_EQ(given.status, 0) << given.err;
  const nlohmann::json g = nlohmann::json::parse(given.out);
  EXPECT_EQ(g["chunk"], 512);
  EXPECT_EQ(g["chunk_reason"], "given (--chunk)");

  // The CPU device keeps F32 KV: 256 GiB, which 128 GiB of host cannot hold. The plan still prints.
  const CliResult f32 = plan(base);
  EXPECT_EQ(f32.status, 1);
  const nlohmann::json k = nlohmann::json::parse(f32.out);
  EXPECT_FALSE(k["fits"].get<bool>());
  EXPECT_EQ(k["kv_bytes_per_token"], 256 * 1024);
  EXPECT_NE(f32.err.find("error: does not fit: "), std::string::npos) << f32.err;
}

// Issue 16: --gpus N plans each device's share (kv heads, ffn rows, weights, resident heads, ring,
// host tier) and what each link carries per decoded token.
TEST_F(PlanCli, GpusPlansEachDeviceAndItsLink) {
  const std::string base = "--shape llama3-8b --ctx 1M --gpu-mem 24GiB --host-mem 512GiB --hybrid off --link-gbps 50 "
                           "--kv-dtype bf16 --device cpu -t 1 --json";
  const CliResult one = plan(base);
  ASSERT_EQ(one.status, 0) << one.err;
  const nlohmann::json j1 = nlohmann::json::parse(one.out);
  ASSERT_EQ(j1["n_devices"], 1);
  ASSERT_EQ(j1["devices"].size(), 1u);
  EXPECT_EQ(j1["devices"][0]["n_kv_heads"], 8);
  EXPECT_EQ(j1["devices"][0]["weight_bytes"], j1["weight_bytes"]);
  EXPECT_EQ(j1["devices"][0]["link_bytes_per_token"], j1["link_bytes_per_token"]);

  const CliResult four = plan(base + " --gpus 4");
  ASSERT_EQ(four.status, 0) << four.err;
  const nlohmann::json j4 = nlohmann::json::parse(four.out);
  ASSERT_EQ(j4["n_devices"], 4);
  ASSERT_EQ(j4["devices"].size(), 4u);
  int64_t ffn = 0, kv = 0, link = 0;
  double slowest = 0.0;
  for (int r = 0; r < 4; ++r) {
    const nlohmann::json& d = j4["devices"][r];
    EXPECT_EQ(d["rank"], r);
    EXPECT_EQ(d["kv_head0"], 2 * r);
    EXPECT_EQ(d["n_kv_heads"], 2);
    EXPECT_EQ(d["ffn0"], ffn);
    ffn += d["n_ffn"].get<int64_t>();
    EXPECT_TRUE(d["fits"].get<bool>());
    EXPECT_LE(d["gpu_bytes_total"].get<int64_t>(), int64_t{24} << 30);
    kv += d["kv_bytes_gpu"].get<int64_t>() + d["kv_bytes_host"].get<int64_t>();
    link += d["link_bytes_per_token"].get<int64_t>();
    slowest = std::max(slowest, d["decode_seconds_per_token"].get<double>());
    // Its own heads only: a quarter of the weights' layers, its own link's share of the KV.
    EXPECT_LT(d["weight_bytes"].get<int64_t>(), j1["weight_bytes"].get<int64_t>() / 2);
    EXPECT_LT(d["link_bytes_per_token"].get<int64_t>(), j1["link_bytes_per_token"].get<int64_t>() / 4);
  }
  EXPECT_EQ(ffn, 14336);
  EXPECT_EQ(kv, int64_t{128} << 30);  // the same KV, split
  // The untied lm_head lives on device 0 only: 128256 x 4096 bf16.
  EXPECT_EQ(j4["devices"][0]["weight_bytes"].get<int64_t>() - j4["devices"][1]["weight_bytes"].get<int64_t>(),
            int64_t{128256} * 4096 * 2);
  // Four caps hold more resident KV than one, so less crosses the links, and the links run at once.
  EXPECT_LT(link, j1["link_bytes_per_token"].get<int64_t>());
  EXPECT_LT(slowest, j1["decode_seconds_per_token"].get<double>() / 4);

  const CliResult table = plan("--shape llama3-8b --ctx 1M --gpu-mem 24GiB --host-mem 512GiB --hybrid off "
                               "--link-gbps 50 --kv-dtype bf16 --device cpu -t 1 --gpus 2");
  ASSERT_EQ(table.status, 0) << table.err;
  EXPECT_NE(table.out.find("per device (2 devices, each with its own link"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("device 1 "), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("kv heads 4-7"), std::string::npos) << table.out;

  const CliResult three = plan(base + " --gpus 3");
  EXPECT_EQ(three.status, 1);
  EXPECT_EQ(three.err, "error: cannot split 8 kv heads over 3 devices: the number of devices must divide the kv heads\n");
  const CliResult zero = plan(base + " --gpus 0");
  EXPECT_EQ(zero.status, 1);
  EXPECT_EQ(zero.err, "error: --gpus must be at least 1\n");
}

TEST_F(PlanCli, ModelSourcesAreExclusiveAndShapesNamed) {
  CliResult r = plan("--shape tiny --config /nonexistent --ctx 1K --gpu-mem 1GiB");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "error: give exactly one of -m DIR, --config FILE or --shape NAME\n");
  r = plan("--ctx 1K --gpu-mem 1GiB");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "error: give exactly one of -m DIR, --config FILE or --shape NAME\n");
  r = plan("--shape llama9 --ctx 1K --gpu-mem 1GiB");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err.rfind("error: unknown shape 'llama9' (built-in shapes: tiny, llama3-8b", 0), 0u) << r.err;
}

}  // namespace
