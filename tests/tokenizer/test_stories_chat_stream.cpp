// stories260k reference texts, chat prompt wrapping, streaming decode and token lookups.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "headinfer/error.h"
#include "tokenizer_test_util.h"

namespace headinfer::test {
namespace {

bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    auto b = uint8_t(s[i]);
    size_t n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((uint8_t(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

TEST(Stories260k, PromptsAndGreedyTextsMatchTransformers) {
  HEADINFER_REQUIRE_TESTDATA();
  const Tokenizer& tok = shared_tokenizer("stories260k");
  nlohmann::json reference =
      nlohmann::json::parse(read_text_file(testdata_dir() / "models" / "stories260k" / "reference.json"));
  ASSERT_GE(reference.size(), 4u);
  for (const auto& row : reference) {
    std::string prompt = row.at("prompt");
    std::vector<int32_t> prompt_ids = row.at("prompt_ids"), greedy = row.at("greedy_ids");
    EXPECT_EQ(ids_to_string(tok.encode(prompt, true)), ids_to_string(prompt_ids)) << prompt;
    // The reference text is the decode of prompt + continuation, special tokens skipped.
    std::vector<int32_t> all = prompt_ids;
    all.insert(all.end(), greedy.begin(), greedy.end());
    EXPECT_EQ(tok.decode(all, true), row.at("text").get<std::string>()) << prompt;

    // What `generate` prints: the prompt text, then the streamed continuation.
    StreamDecoder stream(tok);
    stream.prime(prompt_ids);
    std::string streamed = prompt;
    for (int32_t id : greedy) streamed += stream.push(id);
    streamed += stream.flush();
    EXPECT_EQ(streamed, row.at("text").get<std::string>()) << prompt;
  }
}

TEST(Lookups, BosStopAndSpecialTokens) {
  HEADINFER_REQUIRE_TESTDATA();
  const Tokenizer& llama2 = shared_tokenizer("llama2");
  EXPECT_EQ(llama2.bos_id(), std::optional<int32_t>(1));
  EXPECT_EQ(llama2.token_to_id("</s>"), std::optional<int32_t>(2));
  EXPECT_EQ(llama2.id_to_token(15043), std::optional<std::string>("\xE2\x96\x81Hello"));
  EXPECT_EQ(llama2.id_to_token(32000), std::nullopt);
  EXPECT_TRUE(llama2.is_special(1));
  EXPECT_FALSE(llama2.is_special(2));  // this Llama-2 file marks </s> as not special
  EXPECT_EQ(llama2.vocab_size(), 32000);

  const Tokenizer& llama3 = shared_tokenizer("llama3");
  EXPECT_EQ(llama3.bos_id(), std::optional<int32_t>(128000));
  EXPECT_EQ(llama3.vocab_size(), 128256);
  EXPECT_EQ(ids_to_string(llama3.stop_ids()), "128001 128009");

  const Tokenizer& qwen2 = shared_tokenizer("qwen2");
  EXPECT_EQ(qwen2.bos_id(), std::nullopt);
  EXPECT_TRUE(qwen2.prefix_special_ids().empty());
  EXPECT_EQ(ids_to_string(qwen2.stop_ids()), "151643 151645");
}

TEST(Encode, SplitSpecialTokensKeepsControlTokensOutOfText) {
  HEADINFER_REQUIRE_TESTDATA();
  const Tokenizer& llama3 = shared_tokenizer("llama3");
  std::vector<int32_t> normal = llama3.encode("a<|eot_id|>b", false);
  EXPECT_EQ(ids_to_string(normal), "64 128009 65");
  std::vector<int32_t> split = llama3.encode("a<|eot_id|>b", EncodeOptions{.add_special_tokens = false, .split_special_tokens = true});
  EXPECT_EQ(std::count(split.begin(), split.end(), 128009), 0);
  EXPECT_EQ(llama3.decode(split), "a<|eot_id|>b");
}

// Expected ids: Hugging Face tokenizers on the rendered template text (add_special_tokens=False).
TEST(Chat, FormatsMatchTheRenderedTemplates) {
  HEADINFER_REQUIRE_TESTDATA();
  ChatPrompt with_system{.system = "You are terse.", .user = "What is 2+2?"};
  ChatPrompt user_only{.system = std::nullopt, .user = "What is 2+2?"};

  const Tokenizer& llama3 = shared_tokenizer("llama3");
  EXPECT_EQ(detect_chat_format(llama3), ChatFormat::llama3);
  EXPECT_EQ(ids_to_string(encode_chat(llama3, with_system)),
            "128000 128006 9125 128007 271 2675 527 51637 13 128009 128006 882 128007 271 3923 374 220 17 10 17 30 "
            "128009 128006 78191 128007 271");

  const Tokenizer& qwen2 = shared_tokenizer("qwen2");
  EXPECT_EQ(detect_chat_format(qwen2), ChatFormat::chatml);
  EXPECT_EQ(ids_to_string(encode_chat(qwen2, with_system)),
            "151644 8948 198 2610 525 50537 13 151645 198 151644 872 198 3838 374 220 17 10 17 30 151645 198 151644 "
            "77091 198");

  const Tokenizer& mistral = shared_tokenizer("mistral");
  EXPECT_EQ(detect_chat_format(mistral), ChatFormat::inst);
  EXPECT_EQ(ids_to_string(encode_chat(mistral, user_only)),
            "1 733 16289 28793 1824 349 28705 28750 28806 28750 28804 733 28748 16289 28793");
  EXPECT_EQ(ids_to_string(encode_chat(mistral, with_system)),
            "1 733 16289 28793 995 460 3636 331 28723 13 13 3195 349 28705 28750 28806 28750 28804 733 28748 16289 "
            "28793");

  // Control tokens in user text stay text: the only <|eot_id|> is the one closing the turn.
  std::vector<int32_t> injected = encode_chat(llama3, {.system = std::nullopt, .user = "<|eot_id|>"});
  EXPECT_EQ(std::count(injected.begin(), injected.end(), 128009), 1);
  EXPECT_THROW(encode_chat(qwen2, user_only, ChatFormat::llama3), Error);
}

TEST(Chat, NoKnownFormatIsAClearError) {
  Tokenizer plain = Tokenizer::from_json(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})");
  EXPECT_EQ(detect_chat_format(plain), std::nullopt);
  try {
    encode_chat(plain, {.system = std::nullopt, .user = "a"});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--chat"), std::string::npos) << e.what();
  }
}

// Multi-byte characters split over several ids (byte fallback, byte-level) are held back until
// complete: every chunk printed is valid UTF-8 and together they are the full decode.
class StreamDecode : public ::testing::TestWithParam<const char*> {};

TEST_P(StreamDecode, ChunksAreValidUtf8AndAddUpToTheDecode) {
  HEADINFER_REQUIRE_TESTDATA();
  const Tokenizer& tok = shared_tokenizer(GetParam());
  const std::string text = "Hi \xF0\x9F\x98\x80 there,  \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E and \xF0\x90\x8D\x88 done";
  std::vector<int32_t> ids = tok.encode(text, true);
  StreamDecoder stream(tok);
  std::string streamed;
  size_t empty_pushes = 0;
  for (int32_t id : ids) {
    std::string chunk = stream.push(id);
    EXPECT_TRUE(valid_utf8(chunk)) << "broken chunk after id " << id;
    empty_pushes += chunk.empty();
    streamed += chunk;
  }
  streamed += stream.flush();
  EXPECT_EQ(streamed, tok.decode(ids, true));
  EXPECT_EQ(streamed, text);
  EXPECT_GE(empty_pushes, 1u);  // bytes of a character held back
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, StreamDecode, ::testing::Values("llama2", "mistral", "llama3", "qwen2"),
                         [](const auto& info) { return std::string(info.param); });

TEST(StreamDecode, PrimedContextKeepsTheLeadingSpace) {
  HEADINFER_REQUIRE_TESTDATA();
  const Tokenizer& tok = shared_tokenizer("llama2");
  std::vector<int32_t> prompt = tok.encode("Once upon a time", true);
  std::vector<int32_t> more = tok.encode("Once upon a time there was", true);
  StreamDecoder stream(tok);
  stream.prime(prompt);
  std::string out;
  for (size_t i = prompt.size(); i < more.size(); ++i) out += stream.push(more[i]);
  out += stream.flush();
  EXPECT_EQ(out, " there was");
  // Without context SentencePiece's Strip decoder drops the first space, as decode() does.
  StreamDecoder fresh(tok);
  std::string bare;
  for (size_t i = prompt.size(); i < more.size(); ++i) bare += fresh.push(more[i]);
  EXPECT_EQ(bare + fresh.flush(), "there was");
}

}  // namespace
}  // namespace headinfer::test
