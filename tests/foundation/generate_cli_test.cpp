// `headinfer generate --dump-logits`, run as a user runs it: the built binary in a child process,
// on the CPU, against the shared tiny checkpoints. The file must hold one float32 [vocab] row per
// generated token, and under --temp 0 each row's argmax must be the token it chose.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "testdata.h"

namespace headinfer {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

struct CliRun {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A fresh folder per test for the child's stdout/stderr and the dump.
class GenerateCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("headinfer_cli_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  CliRun run(const std::string& args) const {
    const fs::path out = dir_ / "stdout.txt", err = dir_ / "stderr.txt";
    const std::string cmd = std::string("'") + HEADINFER_CLI + "' " + args + " >'" + out.string() + "' 2>'" +
                            err.string() + "'";
    const int status = std::system(cmd.c_str());
    CliRun r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = read_file(out);
    r.err = read_file(err);
    return r;
  }

  fs::path dir_;
};

fs::path tiny(const std::string& name) { return test::testdata_dir() / "models/tiny" / name; }

std::string prompt_ids_arg(const fs::path& f32_dir, size_t case_index) {
  std::ifstream in(f32_dir / "ref.json");
  const auto ids = json::parse(in)["cases"][case_index]["prompt_ids"].get<std::vector<int32_t>>();
  std::string s;
  for (int32_t id : ids) {
    if (!s.empty()) s += ',';
    s += std::to_string(id);
  }
  return s;
}

std::vector<float> read_f32(const fs::path& p) {
  const std::string bytes = read_file(p);
  std::vector<float> v(bytes.size() / sizeof(float));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(float));
  return v;
}

// bf16 weights (the case the GPU check compares), and a sharded f32 model with its own head_dim.
TEST_F(GenerateCli, DumpLogitsHasOneRowPerTokenAndGreedyPicksEachRowsArgmax) {
  HEADINFER_REQUIRE_TESTDATA();
  const int64_t vocab = 320;  // every tiny model
  for (const char* model : {"llama3-bf16", "qwen3-f32"}) {
    SCOPED_TRACE(model);
    const std::string arch = std::string(model).substr(0, std::string(model).find('-'));
    const fs::path dump = dir_ / "logits.f32";
    const CliRun r = run("generate -m '" + tiny(model).string() + "' --prompt-ids " +
                         prompt_ids_arg(tiny(arch + "-f32"), 1) +
                         " -n 13 --temp 0 --ignore-eos --device cpu -t 2 --json --dump-logits '" + dump.string() + "'");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto tokens = json::parse(r.out)["tokens"].get<std::vector<int32_t>>();
    ASSERT_EQ(tokens.size(), 13u);
    ASSERT_EQ(fs::file_size(dump), tokens.size() * vocab * sizeof(float));
    const std::vector<float> logits = read_f32(dump);
    for (size_t i = 0; i < tokens.size(); ++i) {
      const float* row = logits.data() + i * vocab;
      for (int64_t j = 0; j < vocab; ++j) ASSERT_TRUE(std::isfinite(row[j])) << "row " << i << " col " << j;
      EXPECT_EQ(std::max_element(row, row + vocab) - row, tokens[i]) << "row " << i;
    }
    // Rows differ from step to step: each decode step's logits were dumped, not the prefill's again.
    EXPECT_FALSE(std::equal(logits.begin(), logits.begin() + vocab, logits.begin() + vocab));
  }
}

// Issue 16: --gpus N on the CPU splits the kv heads over N simulated devices. One device's dump is
// the plain run's bit for bit; 2 and 4 give its greedy ids and logits within 1e-5 * max|logit|
// (the o_proj / down_proj sums reassociated: the bound derived in shard_test.cpp).
TEST_F(GenerateCli, GpusOnTheCpuGivesTheOneDeviceRun) {
  HEADINFER_REQUIRE_TESTDATA();
  const int64_t vocab = 320;
  const std::string base = "generate -m '" + tiny("llama2-f32").string() + "' --prompt-ids " +
                           prompt_ids_arg(tiny("llama2-f32"), 1) + " -n 9 --ignore-eos --device cpu -t 2 --json";
  auto run_gpus = [&](const std::string& gpus, std::vector<int32_t>& tokens) {
    const fs::path dump = dir_ / ("logits" + gpus + ".f32");
    const CliRun r = run(base + gpus + " --dump-logits '" + dump.string() + "'");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    if (r.exit_code == 0) tokens = json::parse(r.out)["tokens"].get<std::vector<int32_t>>();
    return read_f32(dump);
  };
  std::vector<int32_t> plain_tokens, tokens;
  const std::vector<float> plain = run_gpus("", plain_tokens);
  ASSERT_EQ(plain.size(), 9u * vocab);
  EXPECT_EQ(run_gpus(" --gpus 1", tokens), plain);
  EXPECT_EQ(tokens, plain_tokens);
  for (const char* n : {" --gpus 2", " --gpus 4"}) {
    SCOPED_TRACE(n);
    const std::vector<float> split = run_gpus(n, tokens);
    EXPECT_EQ(tokens, plain_tokens);
    ASSERT_EQ(split.size(), plain.size());
    EXPECT_NE(split, plain);  // the sums were reassociated: equal bits would mean no split ran
    for (size_t s = 0; s < 9; ++s) {
      float scale = 0.0f, err = 0.0f;
      for (size_t i = s * vocab; i < (s + 1) * vocab; ++i) {
        scale = std::max(scale, std::fabs(plain[i]));
        err = std::max(err, std::fabs(split[i] - plain[i]));
      }
      EXPECT_LE(err, 1e-5f * scale) << "row " << s;
    }
  }
}

TEST_F(GenerateCli, GpusErrorsAreOneLine) {
  HEADINFER_REQUIRE_TESTDATA();
  const std::string base = "generate -m '" + tiny("llama3-f32").string() + "' --prompt-ids 1,2,3 -n 2";
  CliRun r = run(base + " --device cpu --gpus 3");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "error: cannot split 2 kv heads over 3 devices: the number of devices must divide the kv heads\n");
  r = run(base + " --device cpu --gpus 0");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "error: --gpus must be at least 1\n");
  r = run(base + " --device cuda --gpus 2");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err.rfind("error: --gpus 2: multi-GPU execution is not built yet (issue 16)", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST_F(GenerateCli, DumpLogitsToAMissingFolderIsOneErrorLine) {
  HEADINFER_REQUIRE_TESTDATA();
  const CliRun r = run("generate -m '" + tiny("llama3-bf16").string() +
                       "' --prompt-ids 1,2,3 -n 2 --device cpu --dump-logits '" + (dir_ / "no/such/dir/x.f32").string() +
                       "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.err.rfind("error: --dump-logits ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find("no/such/dir/x.f32"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

// The file is opened before the model loads; a run that then fails must not leave it behind.
TEST_F(GenerateCli, FailedRunLeavesNoDumpFile) {
  HEADINFER_REQUIRE_TESTDATA();
  const fs::path dump = dir_ / "logits.f32";
  const CliRun r = run("generate -m '" + tiny("llama3-bf16").string() +
                       "' --prompt-ids 1,2,100000 -n 2 --device cpu --dump-logits '" + dump.string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("outside the vocabulary"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dump));
}

// ---- Hardening (issue 15): bad checkpoints and faults end as one error line, exit status 1,
// nothing on stdout (no partial JSON), whatever goes wrong and when.

// A copy of a shared model folder the test may break.
fs::path writable_copy(const fs::path& from, const fs::path& to) {
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(from)) {
    fs::copy_file(e.path(), to / e.path().filename());
    fs::permissions(to / e.path().filename(), fs::perms::owner_write, fs::perm_options::add);
  }
  return to;
}

void expect_one_error_line(const CliRun& r, const std::string& needle) {
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_EQ(r.err.find("internal"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

// The process-level mutation run's finding: a header number past double's range made the JSON
// parser throw out_of_range, reported as "error: internal" with exit status 2.
TEST_F(GenerateCli, SafetensorsHeaderNumberOverflowIsAnInputError) {
  HEADINFER_REQUIRE_TESTDATA();
  const fs::path model = writable_copy(tiny("llama2-f32"), dir_ / "model");
  const std::string header = R"({"a":{"dtype":"F32","shape":[392320E392448],"data_offsets":[0,4]}})";
  std::ofstream f(model / "model.safetensors", std::ios::binary | std::ios::trunc);
  const uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);  // little-endian length (x86, as the format)
  f << header << std::string(4, '\0');
  f.close();
  expect_one_error_line(run("generate -m '" + model.string() + "' --prompt-ids 1,2 -n 2 --device cpu --json"),
                        "header is not valid JSON");
}

TEST_F(GenerateCli, ConfigSizesNoModelHasAreInputErrors) {
  HEADINFER_REQUIRE_TESTDATA();
  const fs::path model = writable_copy(tiny("llama2-f32"), dir_ / "model");
  std::ifstream in(model / "config.json");
  json config = json::parse(in);
  in.close();
  config["num_hidden_layers"] = int64_t{1} << 62;  // was: a 2^62-entry vector, "error: internal"
  std::ofstream(model / "config.json") << config.dump();
  expect_one_error_line(run("generate -m '" + model.string() + "' --prompt-ids 1,2 -n 2 --device cpu --json"),
                        "num_hidden_layers");
  std::ofstream(model / "config.json") << R"({"model_type": "llama", "rope_theta": 1E400})";
  expect_one_error_line(run("generate -m '" + model.string() + "' --prompt-ids 1,2 -n 2 --device cpu --json"),
                        "invalid JSON");
}

// Host memory for the offloaded KV smaller than the context needs: refused before any work.
TEST_F(GenerateCli, HostMemoryTooSmallForTheContextIsOneErrorLine) {
  HEADINFER_REQUIRE_TESTDATA();
  expect_one_error_line(run("generate -m '" + tiny("llama2-f32").string() +
                            "' --prompt-ids 1,2,3 -n 4 --ctx 4096 --device cpu --offload all --host-mem 64KiB --json"),
                        "host");
}

// A checkpoint file truncated after it was opened and validated (it is memory-mapped): the CLI
// blocks reading its prompt from a FIFO, by then the checkpoint is open; the test cuts the
// safetensors file to its header, then sends the prompt. Loading the weights reads lost pages
// (SIGBUS): one error line and exit status 1, not a "Bus error" crash.
TEST_F(GenerateCli, CheckpointTruncatedAfterOpenIsOneErrorLine) {
  HEADINFER_REQUIRE_TESTDATA();
  const fs::path model = writable_copy(test::testdata_dir() / "models/stories260k", dir_ / "model");
  const fs::path fifo = dir_ / "prompt.fifo", out = dir_ / "stdout.txt", err = dir_ / "stderr.txt";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const std::string cmd = std::string("exec '") + HEADINFER_CLI + "' generate -m '" + model.string() + "' -f '" +
                          fifo.string() + "' -n 4 --device cpu --json >'" + out.string() + "' 2>'" + err.string() + "'";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  const int fd = ::open(fifo.c_str(), O_WRONLY);  // returns once the CLI opens the prompt file
  ASSERT_GE(fd, 0);
  std::ifstream st(model / "model.safetensors", std::ios::binary);
  uint64_t header_len = 0;
  st.read(reinterpret_cast<char*>(&header_len), 8);
  st.close();
  fs::resize_file(model / "model.safetensors", 8 + header_len);
  const std::string prompt = "Once upon a time";
  ASSERT_EQ(::write(fd, prompt.data(), prompt.size()), static_cast<ssize_t>(prompt.size()));
  ::close(fd);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  CliRun r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_file(out);
  r.err = read_file(err);
  expect_one_error_line(r, "SIGBUS");
}

}  // namespace
}  // namespace headinfer
