// Encode and decode: the pipeline of Tokenizer::Impl, in Hugging Face's order.
#include <algorithm>

#include "headinfer/error.h"
#include "impl.h"
#include "unicode.h"

namespace headinfer {

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

void Tokenizer::Impl::encode_into(std::string_view text, const EncodeOptions& options,
                                  std::vector<int32_t>& out) const {
  size_t bad = tok::find_invalid_utf8(text);
  if (bad != std::string_view::npos)
    throw Error("text to tokenize is not valid UTF-8 (byte " + std::to_string(bad) + ")");

  std::vector<tok::AddedSplit> raw_splits, normalized_splits;
  raw_matcher.split(text, options.split_special_tokens, raw_splits);
  tok::PieceList list;
  for (const tok::AddedSplit& raw : raw_splits) {
    if (raw.token_id >= 0) {
      out.push_back(raw.token_id);
      continue;
    }
    std::string normalized(text.substr(raw.begin, raw.end - raw.begin));
    if (normalizer) normalizer->normalize(normalized);
    normalized_splits.clear();
    normalized_matcher.split(normalized, options.split_special_tokens, normalized_splits);
    for (const tok::AddedSplit& split : normalized_splits) {
      if (split.token_id >= 0) {
        out.push_back(split.token_id);
        continue;
      }
      list.text.assign(normalized, split.begin, split.end - split.begin);
      list.pieces.assign(1, tok::Piece{0, list.text.size(), raw.begin == 0 && split.begin == 0});
      if (pre_tokenizer) pre_tokenizer->pre_tokenize(list);
      std::string_view all(list.text);
      for (const tok::Piece& piece : list.pieces)
        model->tokenize(all.substr(piece.begin, piece.end - piece.begin), byte_level_input, out);
    }
  }
  if (options.add_special_tokens && post_processor) post_processor->process(out);
}

const std::string& Tokenizer::Impl::token_of(int32_t id) const {
  auto added = added_by_id.find(id);
  if (added != added_by_id.end()) return added_tokens[added->second].content;
  if (const std::string* token = model->id_to_token(id)) return *token;
  throw Error("token id " + std::to_string(id) + " is not in the vocabulary (size " + std::to_string(vocab_size) + ")");
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  return encode(text, EncodeOptions{add_special_tokens, false});
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  impl_->encode_into(text, options, ids);
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (skip_special_tokens && is_special(id)) continue;
    tokens.push_back(impl_->token_of(id));
  }
  std::string text;
  if (impl_->decoder) {
    impl_->decoder->decode_chain(tokens);
    for (const std::string& t : tokens) text += t;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) text.push_back(' ');
      text += tokens[i];
    }
  }
  return text;
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto added = impl_->added_by_content.find(token);
  if (added != impl_->added_by_content.end()) return added->second;
  int32_t id = -1;
  if (impl_->model->token_to_id(token, id)) return id;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  auto added = impl_->added_by_id.find(id);
  if (added != impl_->added_by_id.end()) return impl_->added_tokens[added->second].content;
  if (const std::string* token = impl_->model->id_to_token(id)) return *token;
  return std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const {
  auto added = impl_->added_by_id.find(id);
  return added != impl_->added_by_id.end() && impl_->added_tokens[added->second].special;
}

std::vector<int32_t> Tokenizer::prefix_special_ids() const {
  return impl_->post_processor ? impl_->post_processor->prefix_ids() : std::vector<int32_t>{};
}

std::optional<int32_t> Tokenizer::bos_id() const {
  std::vector<int32_t> prefix = prefix_special_ids();
  if (prefix.empty()) return std::nullopt;
  return prefix.front();
}

std::vector<int32_t> Tokenizer::stop_ids() const {
  std::vector<int32_t> ids;
  for (const char* name : {"</s>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>", "<|im_end|>"})
    if (auto it = impl_->added_by_content.find(std::string_view(name)); it != impl_->added_by_content.end())
      ids.push_back(it->second);
  return ids;
}

}  // namespace headinfer
