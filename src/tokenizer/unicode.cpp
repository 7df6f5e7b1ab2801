// UTF-8 primitives and the code point classes taken from Oniguruma.
#include "unicode.h"

#include <oniguruma.h>

#include "headinfer/error.h"
#include "hf_regex.h"

namespace headinfer::tok {

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

namespace {

bool is_continuation(uint8_t b) { return (b & 0xC0) == 0x80; }

// Length of the longest prefix at s[i] that could still begin a valid sequence (Rust's
// Utf8Chunks rule: that prefix is what one U+FFFD replaces), and whether it is complete.
struct SequenceCheck {
  size_t length;
  bool valid;
};

SequenceCheck check_sequence(std::string_view s, size_t i) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  size_t n = s.size();
  uint8_t b0 = p[i];
  if (b0 < 0x80) return {1, true};
  size_t width = 0;
  if (b0 >= 0xC2 && b0 <= 0xDF) width = 2;
  else if (b0 >= 0xE0 && b0 <= 0xEF) width = 3;
  else if (b0 >= 0xF0 && b0 <= 0xF4) width = 4;
  else return {1, false};
  if (i + 1 >= n) return {1, false};
  uint8_t b1 = p[i + 1];
  bool second_ok = false;
  if (width == 2) second_ok = is_continuation(b1);
  else if (width == 3)
    second_ok = (b0 == 0xE0 && b1 >= 0xA0 && b1 <= 0xBF) || (b0 >= 0xE1 && b0 <= 0xEC && is_continuation(b1)) ||
                (b0 == 0xED && b1 >= 0x80 && b1 <= 0x9F) || (b0 >= 0xEE && is_continuation(b1));
  else
    second_ok = (b0 == 0xF0 && b1 >= 0x90 && b1 <= 0xBF) || (b0 >= 0xF1 && b0 <= 0xF3 && is_continuation(b1)) ||
                (b0 == 0xF4 && b1 >= 0x80 && b1 <= 0x8F);
  if (!second_ok) return {1, false};
  for (size_t k = 2; k < width; ++k) {
    if (i + k >= n || !is_continuation(p[i + k])) return {k, false};
  }
  return {width, true};
}

}  // namespace

size_t valid_sequence_length(std::string_view s, size_t i) {
  SequenceCheck c = check_sequence(s, i);
  return c.valid ? c.length : 0;
}

size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  while (i < s.size()) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    SequenceCheck c = check_sequence(s, i);
    if (!c.valid) return i;
    i += c.length;
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    SequenceCheck c = check_sequence(bytes, i);
    if (c.valid) out.append(bytes.substr(i, c.length));
    else append_utf8(out, kReplacementChar);
    i += c.length;
  }
  return out;
}

std::vector<uint32_t> to_code_points(std::string_view utf8) {
  std::vector<uint32_t> cps;
  cps.reserve(utf8.size());
  size_t i = 0;
  while (i < utf8.size()) cps.push_back(next_code_point(utf8, i));
  return cps;
}

std::string from_code_points(const std::vector<uint32_t>& cps) {
  std::string out;
  out.reserve(cps.size());
  for (uint32_t cp : cps) append_utf8(out, cp);
  return out;
}

namespace {

void mark_ranges(std::vector<uint8_t>& table, OnigCtype ctype, uint8_t flag) {
  OnigEncoding enc = ONIG_ENCODING_UTF8;
  OnigCodePoint sb_out = 0;
  const OnigCodePoint* ranges = nullptr;
  if (ONIGENC_GET_CTYPE_CODE_RANGE(enc, ctype, &sb_out, &ranges) != 0 || ranges == nullptr)
    throw Error("Oniguruma has no code point table for a Unicode class the tokenizer needs");
  // ranges[0] is the number of [from, to] pairs that follow.
  for (OnigCodePoint k = 0; k < ranges[0]; ++k) {
    OnigCodePoint from = ranges[1 + 2 * k], to = ranges[2 + 2 * k];
    for (OnigCodePoint cp = from; cp <= to && cp < table.size(); ++cp) table[cp] |= flag;
  }
}

OnigCtype property_ctype(const char* name) {
  OnigEncoding enc = ONIG_ENCODING_UTF8;
  auto* begin = reinterpret_cast<OnigUChar*>(const_cast<char*>(name));
  int ctype = ONIGENC_PROPERTY_NAME_TO_CTYPE(enc, begin, begin + std::char_traits<char>::length(name));
  if (ctype < 0) throw Error(std::string("Oniguruma does not know the Unicode property ") + name);
  return OnigCtype(ctype);
}

}  // namespace

CharClasses::CharClasses() : table_(0x110000, 0) {
  ensure_oniguruma_initialized();
  mark_ranges(table_, property_ctype("L"), kLetter);
  mark_ranges(table_, property_ctype("N"), kNumber);
  mark_ranges(table_, ONIGENC_CTYPE_SPACE, kSpace);
  mark_ranges(table_, property_ctype("Alphabetic"), kAlphabetic);
  // Oniguruma's Word is letters, marks, decimal digits and connector punctuation; Rust's \w
  // adds the rest of Alphabetic and the two joiners.
  mark_ranges(table_, ONIGENC_CTYPE_WORD, kWord);
  mark_ranges(table_, property_ctype("Alphabetic"), kWord);
  table_[0x200C] |= kWord;
  table_[0x200D] |= kWord;
}

const CharClasses& CharClasses::instance() {
  static const CharClasses classes;
  return classes;
}

}  // namespace headinfer::tok
