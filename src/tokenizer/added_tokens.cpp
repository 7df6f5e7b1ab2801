// Added-token matching with Hugging Face's rules (AddedVocabulary::find_matches).
#include "added_tokens.h"

#include <algorithm>

#include "unicode.h"

namespace headinfer::tok {

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens, const std::vector<std::string>& patterns)
    : tokens_(std::move(tokens)), nodes_(1) {
  for (size_t k = 0; k < tokens_.size(); ++k) {
    const std::string& pattern = patterns[k];
    if (pattern.empty()) continue;
    first_byte_[uint8_t(pattern[0])] = true;
    int32_t node = 0;
    for (char c : pattern) {
      int32_t next = child(node, uint8_t(c));
      if (next < 0) {
        next = int32_t(nodes_.size());
        nodes_.emplace_back();
        auto& children = nodes_[node].children;
        auto it = std::lower_bound(children.begin(), children.end(), std::make_pair(uint8_t(c), int32_t(-1)));
        children.insert(it, {uint8_t(c), next});
      }
      node = next;
    }
    if (nodes_[node].token < 0) nodes_[node].token = int32_t(k);  // the first of equal patterns wins
  }
}

int32_t AddedTokenMatcher::child(int32_t node, uint8_t byte) const {
  for (const auto& [b, next] : nodes_[node].children)
    if (b == byte) return next;
  return -1;
}

int32_t AddedTokenMatcher::longest_at(std::string_view text, size_t pos, size_t& end) const {
  int32_t node = 0, found = -1;
  for (size_t i = pos; i < text.size(); ++i) {
    node = child(node, uint8_t(text[i]));
    if (node < 0) break;
    if (nodes_[node].token >= 0) {
      found = nodes_[node].token;
      end = i + 1;
    }
  }
  return found;
}

namespace {

// Last code point before `pos` / first at `pos` (text is valid UTF-8).
uint32_t code_point_before(std::string_view text, size_t pos) {
  size_t start = pos - 1;
  while (start > 0 && (uint8_t(text[start]) & 0xC0) == 0x80) --start;
  return next_code_point(text, start);
}

}  // namespace

void AddedTokenMatcher::split(std::string_view text, bool skip_special, std::vector<AddedSplit>& out) const {
  if (text.empty()) return;
  if (tokens_.empty()) {
    out.push_back({0, text.size(), -1});
    return;
  }
  size_t start_offset = 0;  // end of the previous accepted split
  size_t search = 0;        // where the next match may start
  while (search < text.size()) {
    size_t match_begin = search, match_end = 0;
    int32_t k = -1;
    for (; match_begin < text.size(); ++match_begin) {
      if (!first_byte_[uint8_t(text[match_begin])]) continue;
      k = longest_at(text, match_begin, match_end);
      if (k >= 0) break;
    }
    if (k < 0) break;
    search = match_end;
    const AddedToken& token = tokens_[size_t(k)];
    if (skip_special && token.special) continue;
    size_t begin = match_begin, end = match_end;
    if (token.single_word) {
      bool space_before = begin == 0 || !is_word_char(code_point_before(text, begin));
      size_t probe = end;
      bool space_after = end == text.size() || !is_word_char(next_code_point(text, probe));
      if (!space_before || !space_after) continue;
    }
    if (token.lstrip) {
      size_t new_begin = begin;
      while (new_begin > 0) {
        size_t prev = new_begin - 1;
        while (prev > 0 && (uint8_t(text[prev]) & 0xC0) == 0x80) --prev;
        size_t probe = prev;
        if (!is_whitespace(next_code_point(text, probe))) break;
        new_begin = prev;
      }
      begin = std::max(new_begin, start_offset);
    }
    if (token.rstrip) {
      while (end < text.size()) {
        size_t next = end;
        if (!is_whitespace(next_code_point(text, next))) break;
        end = next;
      }
    }
    if (start_offset < begin) out.push_back({start_offset, begin, -1});
    out.push_back({begin, end, token.id});
    start_offset = end;
  }
  if (start_offset < text.size()) out.push_back({start_offset, text.size(), -1});
}

}  // namespace headinfer::tok
