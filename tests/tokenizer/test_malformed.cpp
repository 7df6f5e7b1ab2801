// Malformed or unsupported tokenizer.json files fail at load time with one clear message.
#include <gtest/gtest.h>

#include "headinfer/error.h"
#include "tokenizer_test_util.h"

namespace headinfer::test {
namespace {

// A tiny valid BPE tokenizer; `patch` edits the JSON text before loading.
std::string tiny_json(const std::string& model_extra = "", const std::string& top_extra = "",
                      const std::string& merges = R"(["a b", "ab c"])") {
  return R"({"version": "1.0", "added_tokens": [{"id": 5, "content": "<s>", "special": true}],)" + top_extra +
         R"( "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4}, "merges": )" + merges +
         model_extra + "}}";
}

std::string load_error(const std::string& json) {
  try {
    Tokenizer::from_json(json, "tokenizer.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "(loaded without error)";
}

void expect_error(const std::string& json, const std::string& fragment) {
  std::string message = load_error(json);
  EXPECT_NE(message.find(fragment), std::string::npos) << "message: " << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << "not one line: " << message;
}

TEST(TinyTokenizer, LoadsAndMerges) {
  Tokenizer tok = Tokenizer::from_json(tiny_json());
  EXPECT_EQ(ids_to_string(tok.encode("abcab", false)), "4 3");
  EXPECT_EQ(ids_to_string(tok.encode("a<s>c", false)), "0 5 2");
  EXPECT_EQ(tok.decode(std::vector<int32_t>{4, 5, 3}), "abc <s> ab");  // no decoder: joined by spaces
  EXPECT_EQ(tok.decode(std::vector<int32_t>{4, 5, 3}, true), "abc ab");
  EXPECT_EQ(tok.vocab_size(), 6);
}

TEST(TinyTokenizer, SparseIdsAreKeptAsTheyAre) {
  // Ids need not be dense (tokenizers keeps vocab_r as a map): one token of id 2e9 is loaded,
  // encoded and decoded like the others, without a table of [2e9 + 1] strings (fuzz finding).
  std::string json = tiny_json();
  json.replace(json.find(R"("abc": 4)"), 8, R"("abc": 2000000000)");
  Tokenizer tok = Tokenizer::from_json(json);
  EXPECT_EQ(ids_to_string(tok.encode("abcab", false)), "2000000000 3");
  EXPECT_EQ(tok.decode(std::vector<int32_t>{2000000000, 5, 3}), "abc <s> ab");
  EXPECT_EQ(tok.vocab_size(), 2000000001);
  EXPECT_EQ(tok.id_to_token(4), std::nullopt);
  EXPECT_EQ(tok.token_to_id("<s>"), std::optional<int32_t>(5));  // HF's rule: the model's count of tokens
}

TEST(TinyTokenizer, DigitsSplitsEveryUnicodeNumber) {
  // Rust's char::is_numeric, as HF's Digits uses: ARABIC-INDIC THREE splits like an ASCII digit.
  Tokenizer tok = Tokenizer::from_json(
      R"({"pre_tokenizer": {"type": "Digits", "individual_digits": false},
          "model": {"type": "BPE", "vocab": {"a": 0, "1": 1, "\u0663": 2, "a1": 3, "a\u0663": 4},
                    "merges": ["a 1", "a \u0663"]}})");
  EXPECT_EQ(ids_to_string(tok.encode("a1", false)), "0 1");
  EXPECT_EQ(ids_to_string(tok.encode("a\xD9\xA3", false)), "0 2");
}

TEST(TinyTokenizer, AddedTokenIdsFollowHuggingFacesLoadRule) {
  // HF ignores the stored id: an added token already in the vocabulary takes the vocabulary's id,
  // a new one the next free id.
  Tokenizer tok = Tokenizer::from_json(tiny_json().replace(
      0, std::string(R"({"version": "1.0", "added_tokens": [{"id": 5, "content": "<s>", "special": true}],)").size(),
      R"({"added_tokens": [{"id": 99, "content": "ab"}, {"id": 7, "content": "<s>", "special": true}],)"));
  EXPECT_EQ(tok.token_to_id("ab"), std::optional<int32_t>(3));
  EXPECT_EQ(tok.token_to_id("<s>"), std::optional<int32_t>(5));
  EXPECT_EQ(ids_to_string(tok.encode("c<s>ab", false)), "2 5 3");
}

TEST(Malformed, TruncatedFile) {
  HEADINFER_REQUIRE_TESTDATA();
  std::string text = read_text_file(testdata_dir() / "tokenizers" / "llama2" / "tokenizer.json");
  expect_error(text.substr(0, text.size() / 2), "tokenizer.json: not valid JSON");
  expect_error(tiny_json().substr(0, 40), "not valid JSON");
  expect_error("", "not valid JSON");
}

TEST(Malformed, UnknownComponentsAreNamed) {
  expect_error(tiny_json("", R"( "normalizer": {"type": "Precompiled", "precompiled_charsmap": ""},)"),
               "tokenizer.json: normalizer: unsupported normalizer type 'Precompiled'");
  expect_error(tiny_json("", R"( "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Punctuation"}]},)"),
               "tokenizer.json: pre_tokenizer.pretokenizers[0]: unsupported pre-tokenizer type 'Punctuation'");
  expect_error(tiny_json("", R"( "decoder": {"type": "WordPiece"},)"), "unsupported decoder type 'WordPiece'");
  expect_error(tiny_json("", R"( "post_processor": {"type": "Nope"},)"), "unsupported post-processor type 'Nope'");
  expect_error(R"({"model": {"type": "Unigram", "vocab": []}})", "unsupported model type 'Unigram'");
  expect_error(tiny_json("", R"( "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a"}, "behavior": "Isolated"},)"),
               "tokenizer.json: pre_tokenizer.pattern: invalid regex '(a'");
  expect_error(tiny_json("", R"( "pre_tokenizer": {"type": "Split", "pattern": {"String": "a"}, "behavior": "Sideways"},)"),
               "unknown split behavior 'Sideways'");
}

TEST(Malformed, MergeNamingAMissingToken) {
  expect_error(tiny_json("", "", R"(["a b", "ab x"])"), "tokenizer.json: model.merges[1]: token 'x' is not in the vocabulary");
  expect_error(tiny_json("", "", R"([["a", "b"], ["b", "c"]])"), "merges[1]: token 'bc' is not in the vocabulary");
  expect_error(tiny_json("", "", R"(["a b c"])"), "merges[0]: expected \"left right\"");
  expect_error(tiny_json("", "", R"([42])"), "merges[0]: expected \"left right\" or [left, right]");
}

TEST(Malformed, InconsistentFields) {
  expect_error(R"({"model": {"type": "BPE", "merges": []}})", "tokenizer.json: model: missing field 'vocab'");
  expect_error(tiny_json(R"(, "unk_token": "<unk>")"), "unk_token: '<unk>' is not in the vocabulary");
  expect_error(tiny_json(R"(, "dropout": 0.1)"), "dropout");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}, "merges": []}})", "id 0 is used by two tokens");
  expect_error(tiny_json("", R"( "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {}},)"),
               "special token '<bos>' is not listed in special_tokens");
  // Ids past int32 are refused at load, not wrapped to negative ids that encode would emit.
  expect_error(tiny_json("", R"( "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {"<s>": {"id": "<s>", "ids": [4294967295], "tokens": ["<s>"]}}},)"),
               "special_tokens.<s>.ids: expected token ids");
  expect_error(tiny_json("", R"( "post_processor": {"type": "BertProcessing", "sep": ["<s>", 2147483648], "cls": ["<s>", 5]},)"),
               "sep: expected [token, id]");
  expect_error(R"([1, 2])", "expected a JSON object");
}

TEST(Malformed, BadInputsAtRunTime) {
  Tokenizer tok = Tokenizer::from_json(tiny_json());
  EXPECT_THROW(tok.encode("a\xC3", false), Error);
  EXPECT_THROW(tok.decode(std::vector<int32_t>{0, 77}), Error);
  EXPECT_THROW(Tokenizer::from_file("/nonexistent/tokenizer.json"), Error);
  EXPECT_THROW(Tokenizer::from_model_dir("/nonexistent"), Error);
}

}  // namespace
}  // namespace headinfer::test
