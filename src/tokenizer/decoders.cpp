// Decoders: Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, BPEDecoder.
#include <nlohmann/json.hpp>

#include "components.h"
#include "headinfer/error.h"
#include "hf_regex.h"
#include "unicode.h"

namespace headinfer::tok {

const ByteLevelAlphabet& ByteLevelAlphabet::instance() {
  static const ByteLevelAlphabet alphabet = [] {
    ByteLevelAlphabet a{};
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      a.byte_to_cp[b] = printable ? b : next++;
    }
    for (int& b : a.cp_to_byte_table) b = -1;
    for (uint32_t b = 0; b < 256; ++b) a.cp_to_byte_table[a.byte_to_cp[b]] = int(b);
    return a;
  }();
  return alphabet;
}

int ByteLevelAlphabet::cp_to_byte(uint32_t cp) const { return cp < 512 ? cp_to_byte_table[cp] : -1; }

bool byte_level_token_to_bytes(std::string_view token, std::string& bytes) {
  const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::instance();
  bytes.clear();
  size_t i = 0;
  while (i < token.size()) {
    int b = alphabet.cp_to_byte(next_code_point(token, i));
    if (b < 0) return false;
    bytes.push_back(char(b));
  }
  return true;
}

namespace {

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& step : steps_) step->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

// Joins everything into one string; a token with a character outside the byte-level alphabet
// contributes its own UTF-8 bytes (HF does the same), then invalid UTF-8 becomes U+FFFD.
class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes, token_bytes;
    for (const std::string& token : tokens) {
      if (byte_level_token_to_bytes(token, token_bytes)) bytes += token_bytes;
      else bytes += token;
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first) : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      std::string_view token = tokens[i];
      size_t pos = 0;
      while (pos < token.size()) {
        if (token.substr(pos).starts_with(replacement_)) {
          if (!(i == 0 && strip_first_)) out.push_back(' ');
          pos += replacement_.size();
        } else {
          out.push_back(token[pos++]);
        }
      }
      tokens[i] = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(std::string literal, std::unique_ptr<Regex> regex, std::string content)
      : literal_(std::move(literal)), regex_(std::move(regex)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<Match> matches;
    for (std::string& token : tokens) {
      matches.clear();
      if (regex_) regex_->find_all(token, matches);
      else find_literal(literal_, token, matches);
      if (matches.empty()) continue;
      std::string out;
      size_t last = 0;
      for (const Match& m : matches) {
        out.append(token, last, m.begin - last);
        out.append(content_);
        last = m.end;
      }
      out.append(token, last, std::string::npos);
      token = std::move(out);
    }
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  std::string content_;
};

// Runs of <0xXX> tokens become their bytes when those form valid UTF-8, else one U+FFFD per byte.
class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (find_invalid_utf8(pending) == std::string_view::npos) {
        out.push_back(pending);
      } else {
        for (size_t k = 0; k < pending.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& token : tokens) {
      int byte = parse_byte_token(token);
      if (byte >= 0) {
        pending.push_back(char(byte));
        continue;
      }
      flush();
      out.push_back(std::move(token));
    }
    flush();
    tokens = std::move(out);
  }

  static int parse_byte_token(std::string_view token) {
    if (token.size() != 6 || !token.starts_with("<0x") || token.back() != '>') return -1;
    int value = 0;
    for (char c : token.substr(3, 2)) {
      int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (digit < 0) return -1;
      value = value * 16 + digit;
    }
    return value;
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string joined;
    for (const std::string& token : tokens) joined += token;
    tokens.assign(1, std::move(joined));
  }
};

// Removes up to `start` leading and `stop` trailing occurrences of one character per token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(uint32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) {
      std::vector<uint32_t> cps = to_code_points(token);
      size_t begin = 0;
      while (begin < start_ && begin < cps.size() && cps[begin] == content_) ++begin;
      size_t end = cps.size();
      for (size_t k = 0; k < stop_ && end > begin && cps[end - 1] == content_; ++k) --end;
      token = from_code_points(std::vector<uint32_t>(cps.begin() + begin, cps.begin() + end));
    }
  }

 private:
  uint32_t content_;
  size_t start_, stop_;
};

// BPE suffix decoder: the end-of-word suffix becomes a space, except on the last token.
class BpeSuffixDecoder final : public Decoder {
 public:
  explicit BpeSuffixDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string replaced;
      std::vector<Match> matches;
      find_literal(suffix_, tokens[i], matches);
      size_t last = 0;
      for (const Match& m : matches) {
        replaced.append(tokens[i], last, m.begin - last);
        if (i + 1 != tokens.size()) replaced.push_back(' ');
        last = m.end;
      }
      replaced.append(tokens[i], last, std::string::npos);
      tokens[i] = std::move(replaced);
    }
  }

 private:
  std::string suffix_;
};

size_t require_count(const Json& node, const char* key, std::string_view where) {
  const Json& value = require_field(node, key, where);
  if (!value.is_number_unsigned()) throw Error(std::string(where) + "." + key + ": expected a count");
  return value.get<size_t>();
}

}  // namespace

std::unique_ptr<Decoder> make_decoder(const Json& node, std::string_view where_view) {
  std::string where(where_view);
  std::string type = type_of(node, where);
  if (type == "Sequence") {
    const Json& list = require_field(node, "decoders", where);
    if (!list.is_array()) throw Error(where + ".decoders: expected an array");
    std::vector<std::unique_ptr<Decoder>> steps;
    for (size_t i = 0; i < list.size(); ++i)
      steps.push_back(make_decoder(list[i], where + ".decoders[" + std::to_string(i) + "]"));
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    bool strip_first = true;
    if (node.contains("prepend_scheme") && !node.at("prepend_scheme").is_null())
      strip_first = require_string(node, "prepend_scheme", where) != "never";
    else
      strip_first = optional_bool(node, "add_prefix_space", true, where);
    return std::make_unique<MetaspaceDecoder>(require_string(node, "replacement", where), strip_first);
  }
  if (type == "Replace") {
    std::string literal;
    std::unique_ptr<Regex> regex;
    parse_pattern(require_field(node, "pattern", where), where + ".pattern", literal, regex);
    return std::make_unique<ReplaceDecoder>(std::move(literal), std::move(regex), require_string(node, "content", where));
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    std::string content = require_string(node, "content", where);
    std::vector<uint32_t> cps = to_code_points(content);
    if (cps.size() != 1) throw Error(where + ".content: must be exactly one character");
    return std::make_unique<StripDecoder>(cps[0], require_count(node, "start", where), require_count(node, "stop", where));
  }
  if (type == "BPEDecoder") {
    std::string suffix = node.contains("suffix") ? require_string(node, "suffix", where) : "</w>";
    return std::make_unique<BpeSuffixDecoder>(std::move(suffix));
  }
  throw Error(where + ": unsupported decoder type '" + type +
              "' (supported: Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, BPEDecoder)");
}

}  // namespace headinfer::tok
