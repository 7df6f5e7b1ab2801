// Normalizers: Sequence, NFC, NFD, NFKC, NFKD, Prepend, Replace, Lowercase, Strip.
#include <nlohmann/json.hpp>

#include "components.h"
#include "headinfer/error.h"
#include "hf_regex.h"
#include "unicode.h"

namespace headinfer::tok {

const Json& require_field(const Json& node, const char* key, std::string_view where) {
  if (!node.is_object() || !node.contains(key))
    throw Error(std::string(where) + ": missing field '" + key + "'");
  return node.at(key);
}

std::string require_string(const Json& node, const char* key, std::string_view where) {
  const Json& value = require_field(node, key, where);
  if (!value.is_string()) throw Error(std::string(where) + "." + key + ": expected a string");
  return value.get<std::string>();
}

bool optional_bool(const Json& node, const char* key, bool fallback, std::string_view where) {
  if (!node.is_object() || !node.contains(key) || node.at(key).is_null()) return fallback;
  const Json& value = node.at(key);
  if (!value.is_boolean()) throw Error(std::string(where) + "." + key + ": expected true or false");
  return value.get<bool>();
}

bool is_token_id(const Json& value) { return value.is_number_unsigned() && value.get<uint64_t>() <= INT32_MAX; }

std::string type_of(const Json& node, std::string_view where) {
  if (!node.is_object()) throw Error(std::string(where) + ": expected an object");
  return require_string(node, "type", where);
}

namespace {

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
  void normalize(std::string& text) const override {
    for (const auto& step : steps_) step->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalForm form) : form_(form) {}
  void normalize(std::string& text) const override { text = tok::normalize(text, form_); }

 private:
  NormalForm form_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  void normalize(std::string& text) const override { text = to_lowercase(text); }
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    size_t begin = 0, end = text.size();
    if (left_) {
      while (begin < end) {
        size_t next = begin;
        if (!is_whitespace(next_code_point(text, next))) break;
        begin = next;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (uint8_t(text[start]) & 0xC0) == 0x80) --start;
        size_t probe = start;
        if (!is_whitespace(next_code_point(text, probe))) break;
        end = start;
      }
    }
    text = text.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(std::string literal, std::unique_ptr<Regex> regex, std::string content)
      : literal_(std::move(literal)), regex_(std::move(regex)), content_(std::move(content)) {}
  void normalize(std::string& text) const override {
    std::vector<Match> matches;
    if (regex_) regex_->find_all(text, matches);
    else find_literal(literal_, text, matches);
    if (matches.empty()) return;
    std::string out;
    out.reserve(text.size() + matches.size() * content_.size());
    size_t last = 0;
    for (const Match& m : matches) {
      out.append(text, last, m.begin - last);
      out.append(content_);
      last = m.end;
    }
    out.append(text, last, std::string::npos);
    text = std::move(out);
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  std::string content_;
};

}  // namespace

void parse_pattern(const Json& node, std::string_view where, std::string& literal, std::unique_ptr<Regex>& regex) {
  if (node.is_object() && node.contains("String") && node.at("String").is_string()) {
    literal = node.at("String").get<std::string>();
    if (literal.empty()) throw Error(std::string(where) + ": empty String pattern");
    return;
  }
  if (node.is_object() && node.contains("Regex") && node.at("Regex").is_string()) {
    regex = std::make_unique<Regex>(node.at("Regex").get<std::string>(), where);
    return;
  }
  throw Error(std::string(where) + ": expected a pattern {\"String\": ...} or {\"Regex\": ...}");
}

std::unique_ptr<Normalizer> make_normalizer(const Json& node, std::string_view where_view) {
  std::string where(where_view);
  std::string type = type_of(node, where);
  if (type == "Sequence") {
    const Json& list = require_field(node, "normalizers", where);
    if (!list.is_array()) throw Error(where + ".normalizers: expected an array");
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < list.size(); ++i)
      steps.push_back(make_normalizer(list[i], where + ".normalizers[" + std::to_string(i) + "]"));
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(NormalForm::nfc);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(NormalForm::nfd);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(NormalForm::nfkc);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(NormalForm::nfkd);
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(require_string(node, "prepend", where));
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Strip")
    return std::make_unique<StripNormalizer>(optional_bool(node, "strip_left", true, where),
                                             optional_bool(node, "strip_right", true, where));
  if (type == "Replace") {
    std::string literal;
    std::unique_ptr<Regex> regex;
    parse_pattern(require_field(node, "pattern", where), where + ".pattern", literal, regex);
    return std::make_unique<ReplaceNormalizer>(std::move(literal), std::move(regex),
                                               require_string(node, "content", where));
  }
  throw Error(where + ": unsupported normalizer type '" + type +
              "' (supported: Sequence, NFC, NFD, NFKC, NFKD, Prepend, Replace, Lowercase, Strip)");
}

}  // namespace headinfer::tok
