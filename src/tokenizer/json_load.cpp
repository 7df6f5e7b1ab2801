// tokenizer.json -> Tokenizer::Impl, validating everything up front.
#include <algorithm>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "fast_json.h"
#include "headinfer/error.h"
#include "impl.h"

namespace headinfer {
namespace {

std::vector<tok::AddedToken> parse_added_tokens(const tok::Json& root, const std::string& where) {
  std::vector<tok::AddedToken> tokens;
  if (!root.contains("added_tokens") || root.at("added_tokens").is_null()) return tokens;
  const tok::Json& list = root.at("added_tokens");
  if (!list.is_array()) throw Error(where + ": added_tokens: expected an array");
  for (size_t i = 0; i < list.size(); ++i) {
    std::string item_where = where + ": added_tokens[" + std::to_string(i) + "]";
    const tok::Json& node = list[i];
    tok::AddedToken token;
    const tok::Json& id = tok::require_field(node, "id", item_where);
    if (!tok::is_token_id(id)) throw Error(item_where + ".id: expected a token id");
    token.id = id.get<int32_t>();
    token.content = tok::require_string(node, "content", item_where);
    if (token.content.empty()) throw Error(item_where + ".content: empty added token");
    token.special = tok::optional_bool(node, "special", false, item_where);
    token.single_word = tok::optional_bool(node, "single_word", false, item_where);
    token.lstrip = tok::optional_bool(node, "lstrip", false, item_where);
    token.rstrip = tok::optional_bool(node, "rstrip", false, item_where);
    token.normalized = tok::optional_bool(node, "normalized", !token.special, item_where);
    tokens.push_back(std::move(token));
  }
  return tokens;
}

bool present(const tok::Json& root, const char* key) { return root.contains(key) && !root.at(key).is_null(); }

}  // namespace

Tokenizer Tokenizer::from_json(std::string_view json_text, std::string_view origin_view) {
  std::string origin(origin_view);
  tok::Json root;
  tok::ModelTables tables;
  if (!tok::parse_tokenizer_json(json_text, root, tables)) {
    tables = tok::ModelTables{};
    try {
      root = tok::Json::parse(json_text.begin(), json_text.end());
    } catch (const tok::Json::parse_error& e) {
      throw Error(origin + ": not valid JSON (byte " + std::to_string(e.byte) +
                  "); the file is truncated or corrupt, download it again");
    } catch (const tok::Json::exception& e) {  // out_of_range.406: a number past double's range (15E645)
      throw Error(origin + ": not a valid tokenizer.json (" + e.what() + "); the file is corrupt, download it again");
    }
  }
  if (!root.is_object()) throw Error(origin + ": expected a JSON object at the top level");

  auto impl = std::make_unique<Impl>();
  try {
    const tok::Json& model = tok::require_field(root, "model", origin);
    std::string model_type = model.contains("type") ? tok::type_of(model, origin + ": model")
                             : model.contains("merges") ? "BPE" : "unknown";
    if (model_type != "BPE")
      throw Error(origin + ": model: unsupported model type '" + model_type + "' (supported: BPE)");
    impl->model = std::make_unique<tok::BpeModel>(model, std::move(tables), origin + ": model");

    if (present(root, "normalizer")) impl->normalizer = tok::make_normalizer(root.at("normalizer"), origin + ": normalizer");
    if (present(root, "pre_tokenizer")) {
      impl->pre_tokenizer = tok::make_pre_tokenizer(root.at("pre_tokenizer"), origin + ": pre_tokenizer");
      impl->byte_level_input = impl->pre_tokenizer->maps_to_byte_level();
      if (impl->byte_level_input) impl->model->enable_byte_level_input();
    }
    if (present(root, "post_processor"))
      impl->post_processor = tok::make_post_processor(root.at("post_processor"), origin + ": post_processor");
    if (present(root, "decoder")) impl->decoder = tok::make_decoder(root.at("decoder"), origin + ": decoder");
    // "truncation" and "padding" are ignored, as transformers does for single prompts: an
    // inference prompt is never cut silently.

    impl->added_tokens = parse_added_tokens(root, origin);
  } catch (const tok::Json::exception& e) {
    throw Error(origin + ": unexpected JSON structure: " + e.what());
  }

  // Hugging Face re-derives added-token ids while loading (AddedVocabulary::add_tokens): the
  // model's id when the content is in the vocabulary, else the next free id; the "id" field only
  // warns when it differs. Real files agree with that rule; following it makes odd files agree too.
  const auto model_count = int64_t(impl->model->vocab_count());
  int64_t max_added = -1;
  int32_t max_id = int32_t(impl->model->vocab_size()) - 1;
  std::vector<tok::AddedToken> parsed = std::move(impl->added_tokens);
  impl->added_tokens.clear();
  std::vector<tok::AddedToken> raw, normalized;
  std::vector<std::string> raw_patterns, normalized_patterns;
  for (tok::AddedToken& token : parsed) {
    if (impl->added_by_content.contains(token.content)) continue;  // a repeated content keeps its first entry
    int32_t model_id = -1;
    if (impl->model->token_to_id(token.content, model_id)) token.id = model_id;
    else if (max_added < 0) token.id = int32_t(model_count);
    else token.id = int32_t(max_added >= model_count || model_count == 0 ? max_added + 1 : model_count);
    max_added = std::max<int64_t>(max_added, token.id);
    impl->added_by_id.emplace(token.id, impl->added_tokens.size());
    impl->added_by_content.emplace(token.content, token.id);
    impl->added_tokens.push_back(token);
    max_id = std::max(max_id, token.id);
    if (token.normalized) {
      std::string pattern = token.content;
      if (impl->normalizer) impl->normalizer->normalize(pattern);
      normalized.push_back(token);
      normalized_patterns.push_back(std::move(pattern));
    } else {
      raw.push_back(token);
      raw_patterns.push_back(token.content);
    }
  }
  impl->raw_matcher = tok::AddedTokenMatcher(std::move(raw), raw_patterns);
  impl->normalized_matcher = tok::AddedTokenMatcher(std::move(normalized), normalized_patterns);
  impl->vocab_size = max_id + 1;
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot open the tokenizer file");
  std::string text;
  in.seekg(0, std::ios::end);
  auto size = in.tellg();
  if (size < 0) throw Error(path.string() + ": cannot read the tokenizer file");
  text.resize(size_t(size));
  in.seekg(0);
  in.read(text.data(), std::streamsize(text.size()));
  if (!in) throw Error(path.string() + ": cannot read the tokenizer file");
  return from_json(text, path.string());
}

Tokenizer Tokenizer::from_model_dir(const std::filesystem::path& dir) {
  std::filesystem::path file = dir / "tokenizer.json";
  if (!std::filesystem::exists(file))
    throw Error(file.string() + ": not found; the model folder needs a Hugging Face tokenizer.json");
  return from_file(file);
}

}  // namespace headinfer
