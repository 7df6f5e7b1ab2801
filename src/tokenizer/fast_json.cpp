// A small recursive-descent JSON reader for the two big arrays of tokenizer.json.
#include "fast_json.h"

#include <cstring>

#include <nlohmann/json.hpp>

#include "unicode.h"

namespace headinfer::tok {
namespace {

class Reader {
 public:
  explicit Reader(std::string_view text) : s_(text) {}

  bool ok() const { return ok_; }
  bool at_end() {
    skip_space();
    return i_ >= s_.size();
  }

  void skip_space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  bool consume(char c) {
    skip_space();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool expect(char c) {
    if (!consume(c)) ok_ = false;
    return ok_;
  }
  char peek() {
    skip_space();
    return i_ < s_.size() ? s_[i_] : '\0';
  }

  // A JSON string into `out` (escapes decoded).
  bool string(std::string& out) {
    out.clear();
    if (!expect('"')) return false;
    while (true) {
      size_t start = i_;
      while (i_ < s_.size() && s_[i_] != '"' && s_[i_] != '\\' && uint8_t(s_[i_]) >= 0x20) ++i_;
      out.append(s_.data() + start, i_ - start);
      if (i_ >= s_.size() || uint8_t(s_[i_]) < 0x20) return ok_ = false;
      if (s_[i_] == '"') {
        ++i_;
        return true;
      }
      ++i_;  // backslash
      if (i_ >= s_.size()) return ok_ = false;
      char e = s_[i_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          uint32_t cp = 0;
          if (!hex4(cp)) return ok_ = false;
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t low = 0;
            if (i_ + 1 >= s_.size() || s_[i_] != '\\' || s_[i_ + 1] != 'u') return ok_ = false;
            i_ += 2;
            if (!hex4(low) || low < 0xDC00 || low > 0xDFFF) return ok_ = false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return ok_ = false;
          }
          append_utf8(out, cp);
          break;
        }
        default: return ok_ = false;
      }
    }
  }

  bool integer(int64_t& value) {
    skip_space();
    size_t start = i_;
    bool negative = i_ < s_.size() && s_[i_] == '-';
    if (negative) ++i_;
    value = 0;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9' && i_ - start < 18) value = value * 10 + (s_[i_++] - '0');
    if (i_ == start + (negative ? 1 : 0)) return ok_ = false;
    if (i_ < s_.size() && (s_[i_] == '.' || s_[i_] == 'e' || s_[i_] == 'E' || (s_[i_] >= '0' && s_[i_] <= '9')))
      return ok_ = false;  // not a plain integer: let the generic path judge it
    if (negative) value = -value;
    return true;
  }

  // Skips any JSON value and returns its text.
  std::string_view skip_value() {
    skip_space();
    size_t start = i_;
    int depth = 0;
    do {
      if (i_ >= s_.size()) {
        ok_ = false;
        return {};
      }
      char c = s_[i_];
      if (c == '"') {
        ++i_;
        while (i_ < s_.size() && s_[i_] != '"') i_ += s_[i_] == '\\' ? 2 : 1;
        if (i_ >= s_.size()) {
          ok_ = false;
          return {};
        }
        ++i_;
      } else if (c == '{' || c == '[') {
        ++depth;
        ++i_;
      } else if (c == '}' || c == ']') {
        if (depth == 0) break;
        --depth;
        ++i_;
      } else if (c == ',' || c == ':') {
        if (depth == 0) break;
        ++i_;
      } else {
        ++i_;
      }
    } while (depth > 0 || (i_ < s_.size() && s_[i_] != ',' && s_[i_] != '}' && s_[i_] != ']'));
    return s_.substr(start, i_ - start);
  }

  // Parses a value with nlohmann (small parts of the file only).
  bool generic_value(Json& out) {
    std::string_view text = skip_value();
    if (!ok_) return false;
    out = Json::parse(text.begin(), text.end(), nullptr, false);
    if (out.is_discarded()) return ok_ = false;
    return true;
  }

 private:
  bool hex4(uint32_t& cp) {
    if (i_ + 4 > s_.size()) return false;
    cp = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s_[i_++];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return false;
      cp = cp * 16 + uint32_t(d);
    }
    return true;
  }

  std::string_view s_;
  size_t i_ = 0;
  bool ok_ = true;
};

bool parse_vocab(Reader& r, ModelTables& tables) {
  if (!r.expect('{')) return false;
  if (r.consume('}')) return true;
  std::string key;
  do {
    int64_t id = 0;
    if (!r.string(key) || !r.expect(':') || !r.integer(id)) return false;
    tables.vocab.emplace_back(key, id);
  } while (r.consume(','));
  return r.expect('}');
}

bool parse_merges(Reader& r, ModelTables& tables) {
  if (!r.expect('[')) return false;
  if (r.consume(']')) return true;
  do {
    ModelTables::Merge merge;
    if (r.peek() == '"') {
      if (!r.string(merge.left)) return false;
      merge.spaced = true;
    } else {
      if (!r.expect('[') || !r.string(merge.left) || !r.expect(',') || !r.string(merge.right) || !r.expect(']'))
        return false;
      merge.spaced = false;
    }
    tables.merges.push_back(std::move(merge));
  } while (r.consume(','));
  return r.expect(']');
}

bool parse_model(Reader& r, Json& model, ModelTables& tables) {
  model = Json::object();
  if (!r.expect('{')) return false;
  if (r.consume('}')) return true;
  std::string key;
  bool have_vocab = false, have_merges = false;
  do {
    if (!r.string(key) || !r.expect(':')) return false;
    if (key == "vocab" && r.peek() == '{') {
      if (!parse_vocab(r, tables)) return false;
      have_vocab = true;
    } else if (key == "merges" && r.peek() == '[') {
      if (!parse_merges(r, tables)) return false;
      have_merges = true;
    } else {
      Json value;
      if (!r.generic_value(value)) return false;
      model[key] = std::move(value);
    }
  } while (r.consume(','));
  if (!r.expect('}')) return false;
  // A model without both tables (or of another kind) is read entirely by the generic path.
  tables.present = have_vocab && have_merges;
  return tables.present;
}

}  // namespace

bool parse_tokenizer_json(std::string_view text, Json& root, ModelTables& tables) {
  Reader r(text);
  root = Json::object();
  if (!r.expect('{')) return false;
  if (!r.consume('}')) {
    std::string key;
    do {
      if (!r.string(key) || !r.expect(':')) return false;
      if (key == "model" && r.peek() == '{') {
        Json model;
        if (!parse_model(r, model, tables)) return false;
        root[key] = std::move(model);
      } else {
        Json value;
        if (!r.generic_value(value)) return false;
        root[key] = std::move(value);
      }
    } while (r.consume(','));
    if (!r.expect('}')) return false;
  }
  return r.ok() && r.at_end();
}

}  // namespace headinfer::tok
