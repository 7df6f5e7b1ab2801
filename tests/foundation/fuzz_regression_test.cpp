// One regression test per finding of the fuzz targets (tests/fuzz) and of the process-level
// mutation run before them (issue 15): each input once crashed, leaked or escaped as something
// other than one headinfer::Error, and must now be one clear error.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "headinfer/checkpoint.h"
#include "headinfer/config.h"
#include "headinfer/error.h"
#include "headinfer/options.h"
#include "headinfer/tokenizer.h"

namespace headinfer {
namespace {

// The safetensors image of `header` followed by `n_data` zero bytes.
std::vector<uint8_t> image(const std::string& header, size_t n_data) {
  std::vector<uint8_t> bytes(8 + header.size() + n_data, 0);
  for (int i = 0; i < 8; ++i) bytes[static_cast<size_t>(i)] = static_cast<uint8_t>(uint64_t{header.size()} >> (8 * i));
  std::copy(header.begin(), header.end(), bytes.begin() + 8);
  return bytes;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Mutation run: nlohmann's out_of_range.406 (number overflow) escaped as "error: internal".
TEST(FuzzRegression, SafetensorsHeaderNumberPastDoubleRange) {
  const auto bytes = image(R"({"a":{"dtype":"F32","shape":[392320E392448],"data_offsets":[0,4]}})", 4);
  const std::string e = error_of([&] { parse_safetensors(bytes.data(), bytes.size(), "x.safetensors"); });
  EXPECT_NE(e.find("x.safetensors: header is not valid JSON"), std::string::npos) << e;
}

TEST(FuzzRegression, ParseFromMemoryAgreesWithOpen) {
  const auto bytes = image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8);
  const std::vector<TensorView> t = parse_safetensors(bytes.data(), bytes.size(), "m");
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].data, bytes.data() + bytes.size() - 8);
  EXPECT_EQ(t[0].nbytes, 8u);
  const std::string e = error_of([&] { parse_safetensors(bytes.data(), 7, "m"); });
  EXPECT_NE(e.find("shorter than the 8-byte header length"), std::string::npos) << e;
}

// A layer count no model has sized a std::vector of 2^62 entries: length_error, not an Error.
TEST(FuzzRegression, ConfigSizesNoModelHas) {
  for (const char* key : {"num_hidden_layers", "num_attention_heads", "hidden_size", "head_dim", "vocab_size",
                          "max_position_embeddings"}) {
    nlohmann::json j = {{"model_type", "llama"}, {"num_attention_heads", 4}, {"hidden_size", 64}};
    j[key] = int64_t{1} << 62;
    const std::string e = error_of([&] { parse_model_config(j, "config.json"); });
    EXPECT_NE(e.find(std::string("config.json: field '") + key + "' is "), std::string::npos) << e;
    EXPECT_NE(e.find("more than the"), std::string::npos) << e;
  }
}

// 999999999999 x 2^30 overflowed int64 (UBSan: signed overflow) and came back negative.
TEST(FuzzRegression, CountTooLargeForInt64) {
  const std::string e = error_of([] { parse_count("999999999999G", "--ctx"); });
  EXPECT_EQ(e, "--ctx: '999999999999G' is too large");
  EXPECT_EQ(parse_count("8589934591G", "--ctx"), int64_t{8589934591} << 30);  // the largest that fits
}

// fuzz_tokenizer_load (CI, 2026-12-06): a number past double's range in tokenizer.json escaped as
// nlohmann's out_of_range.406 and ended the process in std::terminate.
TEST(FuzzRegression, TokenizerJsonNumberPastDoubleRange) {
  const std::string text = R"({"added_tokens":[{"id":15E645,"content":"<|im_end|>","special":true}],)"
                           R"("model":{"type":"BPE","vocab":{"a":0},"merges":[]}})";
  const std::string e = error_of([&] { (void)Tokenizer::from_json(text, "tokenizer.json"); });
  EXPECT_EQ(e.rfind("tokenizer.json: ", 0), 0u) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  EXPECT_NE(e, "(no error)");
}

}  // namespace
}  // namespace headinfer
