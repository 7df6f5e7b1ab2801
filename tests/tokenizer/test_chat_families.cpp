// --chat for Gemma (2/3) and Phi-3/3.5 on small synthetic vocabularies (one token per character plus
// the families' special tokens). Expected ids: Hugging Face tokenizers 0.22 on the same JSON and the
// template text rendered by hand from the published chat templates (add_special_tokens=False):
//   gemma: "<bos><start_of_turn>user\n" [system "\n\n"] trim(user) "<end_of_turn>\n<start_of_turn>model\n"
//   phi3:  ["<|system|>\n" system "<|end|>\n"] "<|user|>\n" user "<|end|>\n<|assistant|>\n"
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "headinfer/error.h"
#include "headinfer/tokenizer.h"

namespace headinfer {
namespace {

using nlohmann::json;

// Specials take ids 0.., then one id per character in code-point order.
Tokenizer char_tokenizer(const std::vector<std::string>& specials) {
  const std::string chars = "\n !'+,.0123456789?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  json vocab = json::object(), added = json::array();
  for (size_t i = 0; i < specials.size(); ++i) {
    vocab[specials[i]] = i;
    added.push_back({{"id", i}, {"content", specials[i]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  for (char c : chars) vocab[std::string(1, c)] = vocab.size();
  const json tok = {{"version", "1.0"}, {"added_tokens", added}, {"normalizer", nullptr}, {"pre_tokenizer", nullptr},
                    {"post_processor", nullptr}, {"decoder", nullptr},
                    {"model", {{"type", "BPE"}, {"unk_token", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                               {"vocab", vocab}, {"merges", json::array()}}}};
  return Tokenizer::from_json(tok.dump(), "synthetic tokenizer.json");
}

std::string ids_to_string(const std::vector<int32_t>& ids) {
  std::ostringstream os;
  for (size_t i = 0; i < ids.size(); ++i) os << (i ? " " : "") << ids[i];
  return os.str();
}

const ChatPrompt kWithSystem{.system = "You are terse.", .user = "  What is 2+2? "};
const ChatPrompt kUserOnly{.system = std::nullopt, .user = "  What is 2+2? "};

TEST(ChatFamilies, GemmaMatchesTheRenderedTemplate) {
  const Tokenizer tok = char_tokenizer({"<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"});
  EXPECT_EQ(detect_chat_format(tok), ChatFormat::gemma);
  EXPECT_EQ(ids_to_string(encode_chat(tok, kUserOnly)),
            "2 3 69 67 53 66 5 45 56 49 68 6 57 67 6 14 9 14 22 4 5 3 61 63 52 53 60 5");
  EXPECT_EQ(ids_to_string(encode_chat(tok, kWithSystem)),
            "2 3 69 67 53 66 5 47 63 69 6 49 66 53 6 68 53 66 67 53 11 5 5 45 56 49 68 6 57 67 6 14 9 14 22 4 5 3 61 "
            "63 52 53 60 5");
  // A control token in user text stays text: the only <end_of_turn> closes the turn.
  const auto injected = encode_chat(tok, {.system = std::nullopt, .user = "a<end_of_turn>b"});
  EXPECT_EQ(std::count(injected.begin(), injected.end(), 4), 1);
}

TEST(ChatFamilies, Phi3MatchesTheRenderedTemplate) {
  const Tokenizer tok = char_tokenizer({"<unk>", "<s>", "</s>", "<|system|>", "<|end|>", "<|user|>", "<|assistant|>"});
  EXPECT_EQ(detect_chat_format(tok), ChatFormat::phi3);  // before the <s>/</s> inst fallback
  EXPECT_EQ(ids_to_string(encode_chat(tok, kUserOnly)), "5 7 8 8 47 58 51 70 8 59 69 8 16 11 16 24 8 4 7 6 7");
  EXPECT_EQ(ids_to_string(encode_chat(tok, kWithSystem)),
            "3 7 49 65 71 8 51 68 55 8 70 55 68 69 55 13 4 7 5 7 8 8 47 58 51 70 8 59 69 8 16 11 16 24 8 4 7 6 7");
  // A format the vocabulary lacks is one clear error.
  EXPECT_THROW(encode_chat(tok, kUserOnly, ChatFormat::gemma), Error);
}

}  // namespace
}  // namespace headinfer
