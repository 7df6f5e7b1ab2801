#pragma once
// Added tokens (special and not): the text is split on them before anything else runs.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace headinfer::tok {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// A stretch of text [begin, end): plain text when token_id < 0, else the added token it is.
struct AddedSplit {
  size_t begin;
  size_t end;
  int32_t token_id;
};

// Leftmost-longest, non-overlapping matching of a set of added tokens (HF's Aho-Corasick with
// MatchKind::LeftmostLongest), then HF's single_word / lstrip / rstrip rules.
class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  // `patterns[k]` is the text to find for `tokens[k]` (the content, normalized when the token
  // is matched against normalized text).
  AddedTokenMatcher(std::vector<AddedToken> tokens, const std::vector<std::string>& patterns);

  bool empty() const { return tokens_.empty(); }

  // Appends splits covering all of `text`; empty text gives no splits. With
  // `skip_special`, special tokens are not matched (their text stays plain text).
  void split(std::string_view text, bool skip_special, std::vector<AddedSplit>& out) const;

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
    int32_t token = -1;                                  // index into tokens_ when a pattern ends here
  };
  int32_t child(int32_t node, uint8_t byte) const;
  // Longest pattern starting at text[pos]: returns its token index and sets `end`, or -1.
  int32_t longest_at(std::string_view text, size_t pos, size_t& end) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> nodes_;  // nodes_[0] is the root
  bool first_byte_[256] = {};
};

}  // namespace headinfer::tok
