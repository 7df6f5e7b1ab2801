// Pre-tokenizers: Sequence, Split, ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit.
#include <nlohmann/json.hpp>

#include "components.h"
#include "headinfer/error.h"
#include "hf_regex.h"
#include "unicode.h"

namespace headinfer::tok {
namespace {

enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

SplitBehavior parse_behavior(const std::string& name, const std::string& where) {
  if (name == "Removed") return SplitBehavior::removed;
  if (name == "Isolated") return SplitBehavior::isolated;
  if (name == "MergedWithPrevious") return SplitBehavior::merged_with_previous;
  if (name == "MergedWithNext") return SplitBehavior::merged_with_next;
  if (name == "Contiguous") return SplitBehavior::contiguous;
  throw Error(where + ": unknown split behavior '" + name + "'");
}

struct Segment {
  size_t begin;
  size_t end;
  bool is_match;
};

// HF's NormalizedString::split: turns the (match / non-match) segments covering a piece into
// new pieces. Empty pieces are dropped, as PreTokenizedString::split does.
void apply_behavior(std::vector<Segment>& segs, SplitBehavior behavior, const Piece& piece,
                    std::vector<Piece>& out) {
  auto emit = [&](size_t b, size_t e) {
    if (b < e) out.push_back({b, e, piece.at_text_start && b == piece.begin});
  };
  switch (behavior) {
    case SplitBehavior::removed:
      for (const Segment& s : segs)
        if (!s.is_match) emit(s.begin, s.end);
      return;
    case SplitBehavior::isolated:
      for (const Segment& s : segs) emit(s.begin, s.end);
      return;
    case SplitBehavior::merged_with_previous: {
      std::vector<Segment> merged;
      bool previous_match = false;
      for (const Segment& s : segs) {
        if (s.is_match && !previous_match && !merged.empty()) merged.back().end = s.end;
        else merged.push_back({s.begin, s.end, false});
        previous_match = s.is_match;
      }
      for (const Segment& s : merged) emit(s.begin, s.end);
      return;
    }
    case SplitBehavior::merged_with_next: {
      std::vector<Segment> merged;
      bool previous_match = false;
      for (size_t k = segs.size(); k-- > 0;) {
        const Segment& s = segs[k];
        if (s.is_match && !previous_match && !merged.empty()) merged.back().begin = s.begin;
        else merged.push_back({s.begin, s.end, false});
        previous_match = s.is_match;
      }
      for (size_t k = merged.size(); k-- > 0;) emit(merged[k].begin, merged[k].end);
      return;
    }
    case SplitBehavior::contiguous: {
      std::vector<Segment> merged;
      bool previous_match = false;
      for (const Segment& s : segs) {
        if (s.is_match == previous_match && !merged.empty()) merged.back().end = s.end;
        else merged.push_back({s.begin, s.end, false});
        previous_match = s.is_match;
      }
      for (const Segment& s : merged) emit(s.begin, s.end);
      return;
    }
  }
}

// Splits every piece of `list` at the matches `find` reports (offsets relative to the piece).
template <typename Find>
void split_pieces(PieceList& list, SplitBehavior behavior, bool invert, Find&& find) {
  std::vector<Piece> out;
  out.reserve(list.pieces.size() * 2);
  std::vector<Match> matches;
  std::vector<Segment> segs;
  for (const Piece& piece : list.pieces) {
    std::string_view view(list.text.data() + piece.begin, piece.end - piece.begin);
    matches.clear();
    find(view, matches);
    segs.clear();
    size_t prev = 0;
    for (const Match& m : matches) {
      if (prev != m.begin) segs.push_back({piece.begin + prev, piece.begin + m.begin, invert});
      segs.push_back({piece.begin + m.begin, piece.begin + m.end, !invert});
      prev = m.end;
    }
    if (prev != view.size()) segs.push_back({piece.begin + prev, piece.end, invert});
    apply_behavior(segs, behavior, piece, out);
  }
  list.pieces = std::move(out);
}

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  void pre_tokenize(PieceList& list) const override {
    for (const auto& step : steps_) step->pre_tokenize(list);
  }
  bool maps_to_byte_level() const override { return !steps_.empty() && steps_.back()->maps_to_byte_level(); }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(std::string literal, std::unique_ptr<Regex> regex, SplitBehavior behavior, bool invert)
      : literal_(std::move(literal)), regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(PieceList& list) const override {
    split_pieces(list, behavior_, invert_, [&](std::string_view piece, std::vector<Match>& out) {
      if (regex_) regex_->find_all(piece, out);
      else find_literal(literal_, piece, out);
    });
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  SplitBehavior behavior_;
  bool invert_;
};

// Rebuilds list.text piece by piece through `transform(piece_text, out)`.
template <typename Transform>
void rewrite_pieces(PieceList& list, Transform&& transform) {
  std::string text;
  text.reserve(list.text.size() + list.pieces.size() * 3);
  for (Piece& piece : list.pieces) {
    size_t begin = text.size();
    transform(std::string_view(list.text.data() + piece.begin, piece.end - piece.begin), piece, text);
    piece.begin = begin;
    piece.end = text.size();
  }
  list.text = std::move(text);
}

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), regex_(use_regex ? std::make_unique<Regex>(kGpt2Pattern, "ByteLevel") : nullptr) {}
  void pre_tokenize(PieceList& list) const override {
    if (add_prefix_space_) {
      rewrite_pieces(list, [](std::string_view piece, const Piece&, std::string& out) {
        if (piece.empty() || piece[0] != ' ') out.push_back(' ');
        out.append(piece);
      });
    }
    if (regex_)
      split_pieces(list, SplitBehavior::isolated, false,
                   [&](std::string_view piece, std::vector<Match>& out) { regex_->find_all(piece, out); });
  }
  bool maps_to_byte_level() const override { return true; }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

enum class PrependScheme { always, never, first };

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  void pre_tokenize(PieceList& list) const override {
    rewrite_pieces(list, [&](std::string_view piece, const Piece& meta, std::string& out) {
      size_t begin = out.size();
      for (char c : piece) {
        if (c == ' ') out.append(replacement_);
        else out.push_back(c);
      }
      bool starts_with_replacement = std::string_view(out).substr(begin).starts_with(replacement_);
      bool prepend = (scheme_ == PrependScheme::always && !starts_with_replacement) ||
                     (scheme_ == PrependScheme::first && !starts_with_replacement && meta.at_text_start);
      if (prepend) out.insert(begin, replacement_);
    });
    if (split_)
      split_pieces(list, SplitBehavior::merged_with_next, false,
                   [&](std::string_view piece, std::vector<Match>& out) { find_literal(replacement_, piece, out); });
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class DigitsPreTokenizer final : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}
  void pre_tokenize(PieceList& list) const override {
    split_pieces(list, individual_ ? SplitBehavior::isolated : SplitBehavior::contiguous, false,
                 [](std::string_view piece, std::vector<Match>& out) {
                   // Rust's char::is_numeric: any \p{N}, not only ASCII digits.
                   const CharClasses& classes = CharClasses::instance();
                   size_t i = 0;
                   while (i < piece.size()) {
                     size_t begin = i;
                     if (classes.flags(next_code_point(piece, i)) & kNumber) out.push_back({begin, i});
                   }
                 });
  }

 private:
  bool individual_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& node, std::string_view where_view) {
  std::string where(where_view);
  std::string type = type_of(node, where);
  if (type == "Sequence") {
    const Json& list = require_field(node, "pretokenizers", where);
    if (!list.is_array()) throw Error(where + ".pretokenizers: expected an array");
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      steps.push_back(make_pre_tokenizer(list[i], where + ".pretokenizers[" + std::to_string(i) + "]"));
      if (i + 1 < list.size() && steps.back()->maps_to_byte_level())
        throw Error(where + ": a ByteLevel pre-tokenizer must be the last step of the Sequence");
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (type == "Split") {
    std::string literal;
    std::unique_ptr<Regex> regex;
    parse_pattern(require_field(node, "pattern", where), where + ".pattern", literal, regex);
    return std::make_unique<SplitPreTokenizer>(std::move(literal), std::move(regex),
                                               parse_behavior(require_string(node, "behavior", where), where),
                                               optional_bool(node, "invert", false, where));
  }
  if (type == "ByteLevel")
    return std::make_unique<ByteLevelPreTokenizer>(optional_bool(node, "add_prefix_space", true, where),
                                                   optional_bool(node, "use_regex", true, where));
  if (type == "Metaspace") {
    std::string replacement = require_string(node, "replacement", where);
    if (replacement.empty()) throw Error(where + ".replacement: must be one character");
    PrependScheme scheme = PrependScheme::always;
    if (node.contains("prepend_scheme") && !node.at("prepend_scheme").is_null()) {
      std::string name = require_string(node, "prepend_scheme", where);
      if (name == "always") scheme = PrependScheme::always;
      else if (name == "never") scheme = PrependScheme::never;
      else if (name == "first") scheme = PrependScheme::first;
      else throw Error(where + ".prepend_scheme: unknown value '" + name + "' (always, never, first)");
    } else if (!optional_bool(node, "add_prefix_space", true, where)) {
      scheme = PrependScheme::never;
    }
    return std::make_unique<MetaspacePreTokenizer>(replacement, scheme, optional_bool(node, "split", true, where));
  }
  if (type == "Digits")
    return std::make_unique<DigitsPreTokenizer>(optional_bool(node, "individual_digits", false, where));
  if (type == "Whitespace")
    return std::make_unique<SplitPreTokenizer>("", std::make_unique<Regex>(R"(\w+|[^\w\s]+)", where),
                                               SplitBehavior::removed, true);
  if (type == "WhitespaceSplit")
    return std::make_unique<SplitPreTokenizer>("", std::make_unique<Regex>(R"(\s+)", where),
                                               SplitBehavior::removed, false);
  throw Error(where + ": unsupported pre-tokenizer type '" + type +
              "' (supported: Sequence, Split, ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit)");
}

}  // namespace headinfer::tok
