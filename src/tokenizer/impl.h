#pragma once
// Tokenizer::Impl: the loaded pipeline. Built by json_load.cpp, run by tokenizer.cpp.
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "added_tokens.h"
#include "bpe.h"
#include "components.h"
#include "headinfer/tokenizer.h"

namespace headinfer {

struct Tokenizer::Impl {
  std::unique_ptr<tok::Normalizer> normalizer;       // may be null
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer;  // may be null
  std::unique_ptr<tok::BpeModel> model;
  std::unique_ptr<tok::PostProcessor> post_processor;  // may be null
  std::unique_ptr<tok::Decoder> decoder;               // may be null

  std::vector<tok::AddedToken> added_tokens;
  std::unordered_map<int32_t, size_t> added_by_id;  // id -> index into added_tokens
  tok::StringToId added_by_content;
  tok::AddedTokenMatcher raw_matcher;         // tokens with normalized == false, on the input
  tok::AddedTokenMatcher normalized_matcher;  // tokens with normalized == true, after the normalizer

  bool byte_level_input = false;  // the pre-tokenizer ends with ByteLevel
  int32_t vocab_size = 0;

  void encode_into(std::string_view text, const EncodeOptions& options, std::vector<int32_t>& out) const;
  // The token string of `id`; throws headinfer::Error for an unknown id.
  const std::string& token_of(int32_t id) const;
};

}  // namespace headinfer
