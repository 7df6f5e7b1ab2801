// Incremental detokenization (the algorithm of HF's DecodeStream): decode a small window of
// ids, print what extends the window's already-printed prefix, hold back text that ends in
// U+FFFD (an incomplete byte sequence that a later id may finish).
#include "headinfer/tokenizer.h"

namespace headinfer {
namespace {

bool ends_with_replacement(const std::string& s) { return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0; }

}  // namespace

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(&tokenizer), skip_special_tokens_(skip_special_tokens) {}

void StreamDecoder::prime(std::span<const int32_t> context_ids) {
  // A few ids of context are enough for every decoder we support (spaces, byte runs of at
  // most 4 bytes).
  constexpr size_t kContext = 4;
  size_t keep = std::min(kContext, context_ids.size());
  window_.assign(context_ids.end() - keep, context_ids.end());
  prefix_length_ = window_.size();
  prefix_text_ = tokenizer_->decode(window_, skip_special_tokens_);
}

std::string StreamDecoder::push(int32_t id) {
  window_.push_back(id);
  std::string text = tokenizer_->decode(window_, skip_special_tokens_);
  if (text.size() <= prefix_text_.size() || ends_with_replacement(text)) return {};
  size_t common = 0;
  while (common < prefix_text_.size() && text[common] == prefix_text_[common]) ++common;
  std::string fresh = text.substr(common);
  // The ids after the old prefix become the new prefix; older ones are no longer needed.
  window_.erase(window_.begin(), window_.begin() + std::ptrdiff_t(prefix_length_));
  prefix_length_ = window_.size();
  prefix_text_ = tokenizer_->decode(window_, skip_special_tokens_);
  return fresh;
}

std::string StreamDecoder::flush() {
  std::string fresh;
  if (window_.size() > prefix_length_) {
    std::string text = tokenizer_->decode(window_, skip_special_tokens_);
    size_t common = 0;
    while (common < prefix_text_.size() && common < text.size() && text[common] == prefix_text_[common]) ++common;
    fresh = text.substr(common);
  }
  window_.clear();
  prefix_text_.clear();
  prefix_length_ = 0;
  return fresh;
}

}  // namespace headinfer
