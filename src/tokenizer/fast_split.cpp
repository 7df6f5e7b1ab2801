// Hand-written scanners for the three GPT-style split patterns. Each function returns the end of
// the match that Oniguruma's leftmost-first alternation finds at position i; every position
// starts a match because the alternatives cover every character class. The comments name the
// alternative each branch implements; tests/tokenizer compare the scanners with Oniguruma.
#include <string_view>

#include "hf_regex.h"
#include "unicode.h"

namespace headinfer::tok {
namespace {

constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct Scanner {
  std::string_view s;
  const CharClasses& classes = CharClasses::instance();

  // Code point and flags at byte i (i < s.size()).
  struct Char {
    uint32_t cp;
    uint8_t flags;
    size_t next;
  };
  Char at(size_t i) const {
    auto b = uint8_t(s[i]);
    if (b < 0x80) return {b, classes.flags(b), i + 1};
    size_t j = i;
    uint32_t cp = next_code_point(s, j);
    return {cp, classes.flags(cp), j};
  }
  static bool is_other(uint8_t flags) { return (flags & (kLetter | kNumber | kSpace)) == 0; }

  size_t letters_from(size_t i) const {
    while (i < s.size()) {
      Char c = at(i);
      if (!(c.flags & kLetter)) break;
      i = c.next;
    }
    return i;
  }
  size_t numbers_from(size_t i, int max_count) const {
    for (int k = 0; i < s.size() && (max_count < 0 || k < max_count); ++k) {
      Char c = at(i);
      if (!(c.flags & kNumber)) break;
      i = c.next;
    }
    return i;
  }
  size_t others_from(size_t i) const {
    while (i < s.size()) {
      Char c = at(i);
      if (!is_other(c.flags)) break;
      i = c.next;
    }
    return i;
  }
  size_t newlines_from(size_t i) const {
    while (i < s.size() && (s[i] == '\r' || s[i] == '\n')) ++i;
    return i;
  }

  // 's|'t|'re|'ve|'m|'ll|'d at i (s[i] == '\''), optionally case-insensitive (Oniguruma's
  // Unicode case folding also maps U+017F LATIN SMALL LETTER LONG S to 's').
  size_t contraction(size_t i, bool ignore_case) const {
    auto fold = [&](size_t j, size_t& next) -> char {
      if (j >= s.size()) return 0;
      Char c = at(j);
      next = c.next;
      if (c.cp < 0x80) {
        char ch = char(c.cp);
        if (ignore_case && ch >= 'A' && ch <= 'Z') ch = char(ch + 32);
        return ch;
      }
      if (ignore_case && c.cp == 0x17F) return 's';
      return 0;
    };
    size_t j1 = 0;
    char c1 = fold(i + 1, j1);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return j1;
    size_t j2 = 0;
    if (c1 == 'r' || c1 == 'v') return fold(j1, j2) == 'e' ? j2 : 0;
    if (c1 == 'l') return fold(j1, j2) == 'l' ? j2 : 0;
    return 0;
  }

  // The whitespace alternatives shared by all three patterns, at whitespace s[i]:
  // [\s*[\r\n]+ |] \s+(?!\S) | \s+
  size_t whitespace(size_t i, bool newline_alternative) const {
    size_t run_end = i;
    size_t last_char_begin = i;
    size_t last_newline_end = 0;
    while (run_end < s.size()) {
      Char c = at(run_end);
      if (!(c.flags & kSpace)) break;
      if (c.cp == '\r' || c.cp == '\n') last_newline_end = c.next;
      last_char_begin = run_end;
      run_end = c.next;
    }
    if (newline_alternative && last_newline_end != 0) return last_newline_end;
    if (run_end == s.size()) return run_end;
    if (last_char_begin > i) return last_char_begin;  // \s+(?!\S) gives back one character
    return run_end;
  }

  // (?i:contractions) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N}{1,max_digits} |
  //  ?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
  size_t llama3_at(size_t i, int max_digits) const {
    Char c = at(i);
    if (c.cp == '\'') {
      if (size_t e = contraction(i, true)) return e;
    }
    if (c.flags & kLetter) return letters_from(c.next);
    if (c.cp != '\r' && c.cp != '\n' && !(c.flags & kNumber) && c.next < s.size() && (at(c.next).flags & kLetter))
      return letters_from(c.next);
    if (c.flags & kNumber) return numbers_from(i, max_digits);
    if (c.cp == ' ' && c.next < s.size() && is_other(at(c.next).flags))
      return newlines_from(others_from(c.next));
    if (is_other(c.flags)) return newlines_from(others_from(i));
    return whitespace(i, true);
  }

  // 's|'t|'re|'ve|'m|'ll|'d | ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+ | \s+(?!\S) | \s+
  size_t gpt2_at(size_t i) const {
    Char c = at(i);
    if (c.cp == '\'') {
      if (size_t e = contraction(i, false)) return e;
    }
    size_t body = i;
    uint8_t flags = c.flags;
    if (c.cp == ' ' && c.next < s.size()) {
      Char n = at(c.next);
      if (!(n.flags & kSpace)) {
        body = c.next;
        flags = n.flags;
      }
    }
    if (flags & kLetter) return letters_from(body);
    if (flags & kNumber) return numbers_from(body, -1);
    if (is_other(flags)) return others_from(body);
    return whitespace(i, false);
  }
};

}  // namespace

FastPattern recognise_fast_pattern(std::string_view pattern) {
  if (pattern == kGpt2Pattern) return FastPattern::gpt2;
  if (pattern == kLlama3Pattern) return FastPattern::llama3;
  if (pattern == kQwen2Pattern) return FastPattern::qwen2;
  return FastPattern::none;
}

void fast_find_all(FastPattern kind, std::string_view text, std::vector<Match>& out) {
  Scanner scanner{text};
  size_t i = 0;
  while (i < text.size()) {
    size_t end = 0;
    switch (kind) {
      case FastPattern::gpt2: end = scanner.gpt2_at(i); break;
      case FastPattern::llama3: end = scanner.llama3_at(i, 3); break;
      case FastPattern::qwen2: end = scanner.llama3_at(i, 1); break;
      case FastPattern::none: return;
    }
    out.push_back({i, end});
    i = end;
  }
}

}  // namespace headinfer::tok
