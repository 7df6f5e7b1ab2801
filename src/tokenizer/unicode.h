#pragma once
// UTF-8 helpers, Unicode character classes and the normalization forms the tokenizer needs.
// Character classes come from Oniguruma's own tables, so the hand-written pre-tokenizer scanner
// and the regex engine agree on what \p{L}, \p{N} and \s mean.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace headinfer::tok {

inline constexpr uint32_t kReplacementChar = 0xFFFD;

// Appends the UTF-8 encoding of `cp` (assumed a valid scalar value).
void append_utf8(std::string& out, uint32_t cp);

// Decodes the code point at `s[i]` of valid UTF-8 and advances `i` past it.
inline uint32_t next_code_point(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data()) + i;
  uint8_t b0 = p[0];
  if (b0 < 0x80) {
    i += 1;
    return b0;
  }
  if (b0 < 0xE0) {
    i += 2;
    return (uint32_t(b0 & 0x1F) << 6) | (p[1] & 0x3F);
  }
  if (b0 < 0xF0) {
    i += 3;
    return (uint32_t(b0 & 0x0F) << 12) | (uint32_t(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
  }
  i += 4;
  return (uint32_t(b0 & 0x07) << 18) | (uint32_t(p[1] & 0x3F) << 12) | (uint32_t(p[2] & 0x3F) << 6) |
         (p[3] & 0x3F);
}

// Length of the UTF-8 sequence starting at s[i] if it is valid, else 0.
size_t valid_sequence_length(std::string_view s, size_t i);

// Offset of the first byte that is not part of valid UTF-8, or npos when all of `s` is valid.
size_t find_invalid_utf8(std::string_view s);

// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);

std::vector<uint32_t> to_code_points(std::string_view utf8);
std::string from_code_points(const std::vector<uint32_t>& cps);

// Bit flags per code point.
enum CharFlag : uint8_t {
  kLetter = 1,      // \p{L}
  kNumber = 2,      // \p{N} (also Rust's char::is_numeric)
  kSpace = 4,       // \s in Oniguruma = White_Space (also Rust's char::is_whitespace)
  kAlphabetic = 8,  // Alphabetic (Rust's char::is_alphabetic)
  kWord = 16,       // Rust regex's \w: Alphabetic, marks, decimal digits, connectors, joiners
};

// Immutable after construction; shared by every tokenizer in the process.
class CharClasses {
 public:
  static const CharClasses& instance();
  uint8_t flags(uint32_t cp) const { return cp < table_.size() ? table_[cp] : 0; }

 private:
  CharClasses();
  std::vector<uint8_t> table_;  // [0x110000] CharFlag bits per code point
};

inline bool is_whitespace(uint32_t cp) { return CharClasses::instance().flags(cp) & kSpace; }
inline bool is_word_char(uint32_t cp) { return CharClasses::instance().flags(cp) & kWord; }

enum class NormalForm { nfc, nfd, nfkc, nfkd };

// Unicode normalization of valid UTF-8; returns the input unchanged when it is already normal.
std::string normalize(std::string_view utf8, NormalForm form);

// Rust's char::to_lowercase applied to each code point (full mappings, no context rules).
std::string to_lowercase(std::string_view utf8);

const char* unicode_data_version();

}  // namespace headinfer::tok
