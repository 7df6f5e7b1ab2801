// Property: decode(encode(s)) == s for random valid UTF-8 under the byte-level tokenizers
// (Qwen2 normalizes to NFC first, so there the round trip gives NFC(s)).
#include <gtest/gtest.h>

#include <random>

#include "tokenizer_test_util.h"
#include "unicode.h"

namespace headinfer::test {
namespace {

// Random code points from ASCII, Latin, combining marks, CJK, emoji and the astral planes;
// never surrogates.
std::string random_utf8(std::mt19937& rng, size_t n_chars) {
  static const std::vector<std::pair<uint32_t, uint32_t>> ranges = {
      {0x20, 0x7E}, {0x09, 0x0D}, {0xA0, 0x24F}, {0x300, 0x36F}, {0x370, 0x52F}, {0x600, 0x6FF},
      {0x900, 0x97F}, {0x3040, 0x30FF}, {0x4E00, 0x9FFF}, {0xAC00, 0xD7A3}, {0x1F300, 0x1FAFF},
      {0xE000, 0xF8FF}, {0x10000, 0x10FFFF}};
  std::uniform_int_distribution<size_t> pick(0, ranges.size() - 1);
  std::string s;
  for (size_t i = 0; i < n_chars; ++i) {
    auto [lo, hi] = ranges[pick(rng)];
    uint32_t cp = std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
    tok::append_utf8(s, cp);
  }
  return s;
}

class ByteLevelRoundTrip : public ::testing::TestWithParam<const char*> {};

TEST_P(ByteLevelRoundTrip, DecodeOfEncodeIsTheText) {
  HEADINFER_REQUIRE_TESTDATA();
  const Tokenizer& tok = shared_tokenizer(GetParam());
  const bool nfc = std::string(GetParam()) == "qwen2";
  const uint32_t seed = std::random_device{}();
  std::mt19937 rng(seed);
  std::uniform_int_distribution<size_t> length(1, 97);
  for (int i = 0; i < 300; ++i) {
    std::string text = random_utf8(rng, length(rng));
    std::string expected = nfc ? tok::normalize(text, tok::NormalForm::nfc) : text;
    std::vector<int32_t> ids = tok.encode(text, false);
    ASSERT_EQ(tok.decode(ids), expected) << "seed " << seed << ", case " << i;
    // With the BOS the post-processor adds, skipping special tokens gives the same text.
    ASSERT_EQ(tok.decode(tok.encode(text, true), true), expected) << "seed " << seed << ", case " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, ByteLevelRoundTrip, ::testing::Values("llama3", "qwen2"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace headinfer::test
