// The hand-written GPT-2 / Llama-3 / Qwen2 split scanners against Oniguruma itself on random
// text from an alphabet of the awkward classes, plus the UTF-8 and normalization primitives.
#include <gtest/gtest.h>

#include <random>

#include "hf_regex.h"
#include "unicode.h"

namespace headinfer::tok {
namespace {

constexpr std::string_view kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string random_text(std::mt19937& rng, size_t max_chars) {
  // Letters, digits of several kinds, spaces of several kinds, contraction pieces (with the
  // long s that Unicode case folding maps to s), marks, symbols, controls, 4-byte characters.
  static const std::vector<std::string> alphabet = {
      "a", "Z", "s", "S", "t", "T", "r", "e", "E", "v", "m", "l", "L", "d", "D", "x", "'", "'", "'",
      "0", "7", " ", " ", " ", "\t", "\r", "\n", "\n", ".", ",", "!", "-", "(", "\"",
      "\xC5\xBF",          // U+017F long s
      "\xC3\xA9",          // é
      "\xE4\xB8\xAD",      // 中
      "\xD0\x96",          // Ж
      "\xD9\xA3",          // ARABIC-INDIC DIGIT THREE (Nd)
      "\xC2\xB2",          // SUPERSCRIPT TWO (No)
      "\xE2\x85\xAB",      // ROMAN NUMERAL TWELVE (Nl)
      "\xCC\x81",          // COMBINING ACUTE (Mn: not a letter)
      "\xC2\xA0",          // NBSP
      "\xC2\x85",          // NEXT LINE (White_Space)
      "\xE2\x80\xA8",      // LINE SEPARATOR
      "\xE3\x80\x80",      // IDEOGRAPHIC SPACE
      "\xE2\x80\x8D",      // ZERO WIDTH JOINER (Cf)
      "\xF0\x9F\x98\x80",  // 😀 (So)
      "\xF0\x9D\x90\x80",  // MATHEMATICAL BOLD CAPITAL A (L, 4 bytes)
      "\x0B", "\x0C",
  };
  std::uniform_int_distribution<size_t> length(0, max_chars), pick(0, alphabet.size() - 1);
  std::string s;
  for (size_t n = length(rng); n > 0; --n) s += alphabet[pick(rng)];
  return s;
}

std::string show(std::string_view text, const std::vector<Match>& matches) {
  std::string out;
  for (const Match& m : matches) out += "[" + std::string(text.substr(m.begin, m.end - m.begin)) + "]";
  return out;
}

TEST(FastSplit, MatchesOnigurumaOnRandomText) {
  const uint32_t seed = std::random_device{}();
  std::mt19937 rng(seed);
  for (std::string_view pattern : {kGpt2Pattern, kLlama3, kQwen2}) {
    Regex fast(pattern, "test"), slow(pattern, "test", /*allow_fast_path=*/false);
    ASSERT_NE(fast.fast_pattern(), FastPattern::none);
    ASSERT_EQ(slow.fast_pattern(), FastPattern::none);
    for (int i = 0; i < 3000; ++i) {
      std::string text = random_text(rng, 24);
      std::vector<Match> a, b;
      fast.find_all(text, a);
      slow.find_all(text, b);
      ASSERT_EQ(show(text, a), show(text, b)) << "seed " << seed << ", pattern " << pattern;
    }
  }
}

TEST(Regex, EmptyMatchesFollowHuggingFaceFindIter) {
  Regex regex("a*", "test", false);
  std::vector<Match> m;
  regex.find_all("baab", m);
  // HF/onig find_iter: "" at 0, "aa" at 1, then "" at 4 (an empty match right after "aa" is skipped).
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0].begin, 0u);
  EXPECT_EQ(m[0].end, 0u);
  EXPECT_EQ(m[1].begin, 1u);
  EXPECT_EQ(m[1].end, 3u);
  EXPECT_EQ(m[2].begin, 4u);
  EXPECT_EQ(m[2].end, 4u);
}

TEST(Regex, InvalidPatternIsAClearError) {
  try {
    Regex regex("(unclosed", "pre_tokenizer.pattern");
    FAIL() << "no error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("pre_tokenizer.pattern: invalid regex"), std::string::npos) << e.what();
  }
}

TEST(Utf8, LossyReplacesMaximalInvalidSubparts) {
  EXPECT_EQ(utf8_lossy("ok"), "ok");
  EXPECT_EQ(utf8_lossy("\xE2\x82"), "\xEF\xBF\xBD");                  // truncated 3-byte: one U+FFFD
  EXPECT_EQ(utf8_lossy("\xF0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");      // bad second byte: two
  EXPECT_EQ(utf8_lossy("a\xFF" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(find_invalid_utf8("h\xC3\xA9llo"), std::string_view::npos);
  EXPECT_EQ(find_invalid_utf8("h\xC3"), 1u);
}

TEST(Unicode, NormalizationForms) {
  EXPECT_EQ(normalize("e\xCC\x81", NormalForm::nfc), "\xC3\xA9");                      // e + acute -> é
  EXPECT_EQ(normalize("\xC3\xA9", NormalForm::nfd), "e\xCC\x81");
  EXPECT_EQ(normalize("\xEF\xAC\x81", NormalForm::nfkc), "fi");                        // ﬁ ligature
  EXPECT_EQ(normalize("\xEF\xAC\x81", NormalForm::nfc), "\xEF\xAC\x81");
  EXPECT_EQ(normalize("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", NormalForm::nfc), "\xEA\xB0\x81");  // jamo -> 각
  EXPECT_EQ(normalize("\xEA\xB0\x81", NormalForm::nfd), "\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8");
  EXPECT_EQ(normalize("a\xCC\x81\xCC\xA3", NormalForm::nfc), "\xE1\xBA\xA1\xCC\x81");  // reordered, then ạ + acute
  EXPECT_EQ(normalize("\xE2\x84\xAB", NormalForm::nfc), "\xC3\x85");                   // Angstrom sign -> Å
  EXPECT_EQ(normalize("\xC2\xB2", NormalForm::nfkd), "2");
}

TEST(Unicode, LowercaseUsesFullMappings) {
  EXPECT_EQ(to_lowercase("HeLLo"), "hello");
  EXPECT_EQ(to_lowercase("\xC4\xB0"), "i\xCC\x87");          // İ -> i + combining dot
  EXPECT_EQ(to_lowercase("\xCE\x91\xCE\xA3"), "\xCE\xB1\xCF\x83");  // ΑΣ -> ασ (no final-sigma rule)
}

}  // namespace
}  // namespace headinfer::tok
