// Every reference vector in ../shared/testdata/vectors: llama.cpp's suites and HF's jsonl files.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tokenizer_test_util.h"

namespace headinfer::test {
namespace {

struct LlamaCppSuite {
  const char* vocab;      // ggml-vocab-<vocab>.gguf.{inp,out}
  const char* tokenizer;  // the shared tokenizer folder that reproduces it
};

class LlamaCppVectors : public ::testing::TestWithParam<LlamaCppSuite> {};

TEST_P(LlamaCppVectors, AllInputsEncodeExactly) {
  HEADINFER_REQUIRE_TESTDATA();
  const LlamaCppSuite& suite = GetParam();
  auto base = testdata_dir() / "vectors" / "llamacpp" / (std::string("ggml-vocab-") + suite.vocab + ".gguf");
  std::string inputs = read_text_file(base.string() + ".inp");
  std::string outputs = read_text_file(base.string() + ".out");
  const std::string separator = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t pos = 0;;) {
    size_t next = inputs.find(separator, pos);
    if (next == std::string::npos) break;
    texts.push_back(inputs.substr(pos, next - pos));
    pos = next + separator.size();
  }
  std::vector<std::string> lines;
  std::stringstream out(outputs);
  for (std::string line; std::getline(out, line);) lines.push_back(line);
  ASSERT_EQ(texts.size(), lines.size());
  ASSERT_GE(texts.size(), 40u);

  const Tokenizer& tok = shared_tokenizer(suite.tokenizer);
  for (size_t i = 0; i < texts.size(); ++i) {
    std::vector<int32_t> expected;
    std::stringstream ids(lines[i]);
    for (int32_t id; ids >> id;) expected.push_back(id);
    EXPECT_EQ(ids_to_string(tok.encode(texts[i], false)), ids_to_string(expected)) << "input " << i << ": " << texts[i];
  }
}

INSTANTIATE_TEST_SUITE_P(Suites, LlamaCppVectors,
                         ::testing::Values(LlamaCppSuite{"llama-spm", "llama2"}, LlamaCppSuite{"llama-bpe", "llama3"},
                                           LlamaCppSuite{"qwen2", "qwen2"}),
                         [](const auto& info) { return std::string(info.param.tokenizer); });

class HfVectors : public ::testing::TestWithParam<const char*> {};

std::vector<int32_t> as_ids(const nlohmann::json& node) { return node.get<std::vector<int32_t>>(); }

TEST_P(HfVectors, EveryLineMatchesIdsIdsWithSpecialAndDecoded) {
  HEADINFER_REQUIRE_TESTDATA();
  const Tokenizer& tok = shared_tokenizer(GetParam());
  std::ifstream in(testdata_dir() / "vectors" / "hf" / (std::string(GetParam()) + ".jsonl"));
  ASSERT_TRUE(in) << "missing jsonl";
  size_t n_lines = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    ++n_lines;
    nlohmann::json row = nlohmann::json::parse(line);
    std::string text = row.at("text");
    std::vector<int32_t> ids = as_ids(row.at("ids"));
    EXPECT_EQ(ids_to_string(tok.encode(text, false)), ids_to_string(ids)) << "line " << n_lines << ": " << text;
    EXPECT_EQ(ids_to_string(tok.encode(text, true)), ids_to_string(as_ids(row.at("ids_with_special"))))
        << "line " << n_lines << ": " << text;
    EXPECT_EQ(tok.decode(ids, false), row.at("decoded").get<std::string>()) << "line " << n_lines;

    // Streaming one id at a time prints exactly the full decode.
    StreamDecoder stream(tok, false);
    std::string streamed;
    for (int32_t id : ids) streamed += stream.push(id);
    streamed += stream.flush();
    EXPECT_EQ(streamed, row.at("decoded").get<std::string>()) << "streamed, line " << n_lines;
  }
  EXPECT_EQ(n_lines, 200u);
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, HfVectors, ::testing::Values("llama2", "mistral", "llama3", "qwen2"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace headinfer::test
