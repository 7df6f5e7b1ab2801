// Broken checkpoints, each made from a good file: every one gives its own clear error, never a
// crash (CI also runs these under AddressSanitizer).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/error.h"
#include "engine_options.h"
#include "testdata.h"

namespace headinfer {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const fs::path& p, const std::string& s) {
  fs::remove(p);
  std::ofstream out(p, std::ios::binary);
  out.write(s.data(), static_cast<std::streamsize>(s.size()));
}

// A writable copy of a shared model folder.
class BrokenCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::have_testdata()) GTEST_SKIP() << "shared test data not found";
    dir_ = fs::temp_directory_path() / ("headinfer_broken_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  fs::path copy_model(const std::string& name) {
    fs::create_directories(dir_);
    for (const auto& e : fs::directory_iterator(test::testdata_dir() / "models/tiny" / name)) {
      fs::copy_file(e.path(), dir_ / e.path().filename());
      fs::permissions(dir_ / e.path().filename(), fs::perms::owner_write, fs::perm_options::add);
    }
    return dir_;
  }
  // Splits model.safetensors into its header JSON and data section.
  std::pair<json, std::string> split(const fs::path& file) {
    const std::string bytes = read_bytes(file);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
    return {json::parse(bytes.substr(8, n)), bytes.substr(8 + n)};
  }
  void join(const fs::path& file, const std::string& header, const std::string& data) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
    write_bytes(file, out + header + data);
  }
  // Expects Checkpoint::open (and building the model) to fail with a message containing `what`.
  void expect_error(const std::string& what) {
    try {
      auto ckpt = Checkpoint::open(dir_);
      auto device = make_cpu_device({1, 0});
      Engine engine(*ckpt, *device, context_of(16, 16));
      FAIL() << "expected an error containing '" << what << "'";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(what), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
    }
  }
  fs::path dir_;
};

TEST_F(BrokenCheckpoint, GoodFileLoads) {
  copy_model("llama2-f32");
  auto ckpt = Checkpoint::open(dir_);
  EXPECT_NE(ckpt->find("model.embed_tokens.weight"), nullptr);
}

TEST_F(BrokenCheckpoint, Truncated) {
  const fs::path f = copy_model("llama2-f32") / "model.safetensors";
  const std::string bytes = read_bytes(f);
  write_bytes(f, bytes.substr(0, bytes.size() - 1000));
  expect_error("truncated");
}

TEST_F(BrokenCheckpoint, ShorterThanTheHeaderLength) {
  const fs::path f = copy_model("llama2-f32") / "model.safetensors";
  write_bytes(f, "abc");
  expect_error("shorter than the 8-byte header length");
}

TEST_F(BrokenCheckpoint, HeaderLengthPastTheEnd) {
  const fs::path f = copy_model("llama2-f32") / "model.safetensors";
  std::string bytes = read_bytes(f);
  bytes[6] = 1;  // header length ~ 2^48
  write_bytes(f, bytes);
  expect_error("runs past the end of the file");
}

TEST_F(BrokenCheckpoint, InvalidHeaderJson) {
  const fs::path f = copy_model("llama2-f32") / "model.safetensors";
  auto [header, data] = split(f);
  std::string text = header.dump();
  text.back() = ' ';  // drop the closing brace, keeping the length
  join(f, text, data);
  expect_error("header is not valid JSON");
}

TEST_F(BrokenCheckpoint, OverlappingOffsets) {
  const fs::path f = copy_model("llama2-f32") / "model.safetensors";
  auto [header, data] = split(f);
  // Move the second tensor (by offset) to start where the first one does, keeping its size.
  std::vector<std::pair<uint64_t, std::string>> order;
  for (auto& [name, e] : header.items())
    if (name != "__metadata__") order.emplace_back(e["data_offsets"][0].get<uint64_t>(), name);
  std::sort(order.begin(), order.end());
  json& second = header[order[1].second];
  const uint64_t size = second["data_offsets"][1].get<uint64_t>() - second["data_offsets"][0].get<uint64_t>();
  second["data_offsets"] = {order[0].first, order[0].first + size};
  join(f, header.dump(), data);
  expect_error("overlaps");
}

TEST_F(BrokenCheckpoint, UnknownDtype) {
  const fs::path f = copy_model("llama2-f32") / "model.safetensors";
  auto [header, data] = split(f);
  header["model.norm.weight"]["dtype"] = "F7";
  join(f, header.dump(), data);
  expect_error("unknown dtype 'F7'");
}

TEST_F(BrokenCheckpoint, UnsupportedDtype) {
  const fs::path f = copy_model("llama2-f32") / "model.safetensors";
  auto [header, data] = split(f);
  header["model.norm.weight"]["dtype"] = "I32";  // same size as F32, so only the dtype is wrong
  join(f, header.dump(), data);
  expect_error("dtype I32 is not supported");
}

TEST_F(BrokenCheckpoint, ByteSizeDisagreesWithShape) {
  const fs::path f = copy_model("llama2-f32") / "model.safetensors";
  auto [header, data] = split(f);
  header["model.norm.weight"]["shape"] = {65};
  join(f, header.dump(), data);
  expect_error("needs 260");
}

TEST_F(BrokenCheckpoint, DuplicateTensorName) {
  const fs::path f = copy_model("llama2-f32") / "model.safetensors";
  auto [header, data] = split(f);
  std::string text = header.dump();
  const std::string entry = "\"model.norm.weight\":" + header["model.norm.weight"].dump();
  text.insert(1, entry + ",");
  join(f, text, data);
  expect_error("listed twice");
}

TEST_F(BrokenCheckpoint, ShapeDisagreesWithConfig) {
  const fs::path d = copy_model("llama2-f32");
  json config = json::parse(read_bytes(d / "config.json"));
  config["intermediate_size"] = 177;
  write_bytes(d / "config.json", config.dump());
  expect_error("but config.json implies [177, 64]");
}

TEST_F(BrokenCheckpoint, MissingTensor) {
  const fs::path d = copy_model("llama2-f32");
  json config = json::parse(read_bytes(d / "config.json"));
  config["num_hidden_layers"] = 4;
  write_bytes(d / "config.json", config.dump());
  expect_error("tensor 'model.layers.3.input_layernorm.weight' [64] is missing");
}

TEST_F(BrokenCheckpoint, MissingShard) {
  const fs::path d = copy_model("llama3-f32");
  fs::remove(d / "model-00002-of-00003.safetensors");
  expect_error("model-00002-of-00003.safetensors: shard named by model.safetensors.index.json is missing");
}

TEST_F(BrokenCheckpoint, ShardedCheckpointLoads) {
  copy_model("llama3-f32");
  auto ckpt = Checkpoint::open(dir_);
  EXPECT_NE(ckpt->find("lm_head.weight"), nullptr);
}

TEST_F(BrokenCheckpoint, UnsupportedModelType) {
  const fs::path d = copy_model("llama2-f32");
  json config = json::parse(read_bytes(d / "config.json"));
  config["model_type"] = "gpt2";
  write_bytes(d / "config.json", config.dump());
  expect_error("field 'model_type' has unsupported value 'gpt2'");
}

TEST_F(BrokenCheckpoint, InvalidConfigJson) {
  const fs::path d = copy_model("llama2-f32");
  write_bytes(d / "config.json", "{\"model_type\": \"llama\",");
  expect_error("config.json: invalid JSON");
}

TEST_F(BrokenCheckpoint, NoWeights) {
  const fs::path d = copy_model("llama2-f32");
  fs::remove(d / "model.safetensors");
  expect_error("no *.safetensors file");
}

TEST(SafetensorsWriter, RoundTrip) {
  const fs::path p = fs::temp_directory_path() / "headinfer_roundtrip.safetensors";
  std::vector<TensorToWrite> tensors;
  tensors.push_back({"a", DType::BF16, {3, 2}, std::vector<uint8_t>(12, 7)});
  tensors.push_back({"b", DType::F32, {5}, std::vector<uint8_t>(20, 9)});
  write_safetensors(p, tensors);
  auto f = SafetensorsFile::open(p);
  ASSERT_EQ(f->tensors().size(), 2u);
  for (const TensorView& t : f->tensors()) {
    const TensorToWrite& w = t.name == "a" ? tensors[0] : tensors[1];
    EXPECT_EQ(t.shape, w.shape);
    EXPECT_EQ(t.dtype, w.dtype);
    EXPECT_EQ(std::memcmp(t.data, w.bytes.data(), w.bytes.size()), 0);
  }
  fs::remove(p);
}

}  // namespace
}  // namespace headinfer
