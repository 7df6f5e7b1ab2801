#pragma once
// Regex matching with Hugging Face tokenizers' semantics: Oniguruma (the engine HF uses) with
// its default syntax, matches found like HF's SysRegex::find_iter. The split patterns of the
// GPT-2, Llama-3 and Qwen2 families are recognised and run by a hand-written scanner instead,
// which is much faster and tested against Oniguruma for equality.
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace headinfer::tok {

void ensure_oniguruma_initialized();

struct Match {
  size_t begin;
  size_t end;
};

// Patterns with a hand-written scanner (see fast_split.cpp).
enum class FastPattern { none, gpt2, llama3, qwen2 };

FastPattern recognise_fast_pattern(std::string_view pattern);

// Appends the matches of `kind` over `text`; every byte of `text` belongs to exactly one match.
void fast_find_all(FastPattern kind, std::string_view text, std::vector<Match>& out);

// The pattern ByteLevel's use_regex splits with.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class Regex {
 public:
  // Throws headinfer::Error naming `what` when Oniguruma rejects the pattern.
  Regex(std::string_view pattern, std::string_view what, bool allow_fast_path = true);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends every match over `text` (HF find_iter: an empty match right where the previous
  // match ended is skipped by advancing one character).
  void find_all(std::string_view text, std::vector<Match>& out) const;

  const std::string& pattern() const { return pattern_; }
  FastPattern fast_pattern() const { return fast_; }

 private:
  std::string pattern_;
  FastPattern fast_ = FastPattern::none;
  void* regex_ = nullptr;  // OnigRegex; null only after a move
};

// Literal, non-overlapping, left-to-right matches of `needle` in `text`.
void find_literal(std::string_view needle, std::string_view text, std::vector<Match>& out);

}  // namespace headinfer::tok
