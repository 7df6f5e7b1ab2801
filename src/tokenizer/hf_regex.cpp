// Oniguruma wrapper with Hugging Face's find_iter semantics.
#include "hf_regex.h"

#include <oniguruma.h>

#include <mutex>

#include "headinfer/error.h"

namespace headinfer::tok {

void ensure_oniguruma_initialized() {
  static std::once_flag once;
  std::call_once(once, [] {
    OnigEncoding encodings[] = {ONIG_ENCODING_UTF8};
    onig_initialize(encodings, 1);
  });
}

Regex::Regex(std::string_view pattern, std::string_view what, bool allow_fast_path) : pattern_(pattern) {
  ensure_oniguruma_initialized();
  if (allow_fast_path) fast_ = recognise_fast_pattern(pattern);
  OnigRegex regex = nullptr;
  OnigErrorInfo info;
  const auto* begin = reinterpret_cast<const OnigUChar*>(pattern_.data());
  int rc = onig_new(&regex, begin, begin + pattern_.size(), ONIG_OPTION_NONE, ONIG_ENCODING_UTF8,
                    ONIG_SYNTAX_DEFAULT, &info);
  if (rc != ONIG_NORMAL) {
    OnigUChar message[ONIG_MAX_ERROR_MESSAGE_LEN];
    onig_error_code_to_str(message, rc, &info);
    throw Error(std::string(what) + ": invalid regex '" + pattern_ + "': " + reinterpret_cast<char*>(message));
  }
  regex_ = regex;
}

Regex::~Regex() {
  if (regex_) onig_free(static_cast<OnigRegex>(regex_));
}

Regex::Regex(Regex&& other) noexcept
    : pattern_(std::move(other.pattern_)), fast_(other.fast_), regex_(other.regex_) {
  other.regex_ = nullptr;
}

Regex& Regex::operator=(Regex&& other) noexcept {
  if (this != &other) {
    if (regex_) onig_free(static_cast<OnigRegex>(regex_));
    pattern_ = std::move(other.pattern_);
    fast_ = other.fast_;
    regex_ = other.regex_;
    other.regex_ = nullptr;
  }
  return *this;
}

void Regex::find_all(std::string_view text, std::vector<Match>& out) const {
  if (fast_ != FastPattern::none) {
    fast_find_all(fast_, text, out);
    return;
  }
  auto* regex = static_cast<OnigRegex>(regex_);
  std::unique_ptr<OnigRegion, void (*)(OnigRegion*)> region(onig_region_new(),
                                                            [](OnigRegion* r) { onig_region_free(r, 1); });
  const auto* str = reinterpret_cast<const OnigUChar*>(text.data());
  const OnigUChar* end = str + text.size();
  size_t last_end = 0;
  bool have_last_match = false;
  size_t last_match_end = 0;
  while (last_end <= text.size()) {
    int rc = onig_search(regex, str, end, str + last_end, end, region.get(), ONIG_OPTION_NONE);
    if (rc == ONIG_MISMATCH) break;
    if (rc < 0) {
      OnigUChar message[ONIG_MAX_ERROR_MESSAGE_LEN];
      onig_error_code_to_str(message, rc);
      throw Error("regex '" + pattern_ + "' failed: " + reinterpret_cast<char*>(message));
    }
    auto begin = size_t(region->beg[0]);
    auto stop = size_t(region->end[0]);
    if (begin == stop && have_last_match && last_match_end == stop) {
      if (last_end >= text.size()) break;
      // Advance by one UTF-8 character.
      auto lead = uint8_t(text[last_end]);
      last_end += lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
      continue;
    }
    out.push_back({begin, stop});
    last_end = stop;
    have_last_match = true;
    last_match_end = stop;
  }
}

void find_literal(std::string_view needle, std::string_view text, std::vector<Match>& out) {
  if (needle.empty()) return;
  size_t pos = 0;
  while ((pos = text.find(needle, pos)) != std::string_view::npos) {
    out.push_back({pos, pos + needle.size()});
    pos += needle.size();
  }
}

}  // namespace headinfer::tok
