// BPE: symbols from characters (or bytes), then the lowest-ranked adjacent pair is merged,
// leftmost first on ties, until no pair has a merge -- the order HF's Word::merge_all uses.
#include "bpe.h"

#include <algorithm>
#include <queue>

#include <nlohmann/json.hpp>

#include "headinfer/error.h"
#include "unicode.h"

namespace headinfer::tok {

void MergeTable::reserve(size_t n) {
  size_t size = 16;
  while (size < 2 * n) size <<= 1;
  slots_.assign(size, Entry{kEmpty, 0, 0});
  mask_ = size - 1;
}

void MergeTable::insert(int32_t left, int32_t right, uint32_t rank, int32_t merged) {
  uint64_t key = (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
  for (size_t slot = hash(key) & mask_;; slot = (slot + 1) & mask_) {
    Entry& e = slots_[slot];
    if (e.key == kEmpty || e.key == key) {
      e = Entry{key, rank, merged};  // a repeated merge keeps its last rank, as HF's HashMap does
      return;
    }
  }
}

void StringIdMap::reserve(size_t n) {
  size_t size = 16;
  while (size < 2 * n) size <<= 1;
  if (size <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(size, Slot{0, 0, kEmpty});
  mask_ = size - 1;
  keys_.reserve(n);
  for (const Slot& s : old) {
    if (s.key == kEmpty) continue;
    size_t slot = s.hash & mask_;
    while (slots_[slot].key != kEmpty) slot = (slot + 1) & mask_;
    slots_[slot] = s;
  }
}

bool StringIdMap::emplace(std::string key, int32_t value) {
  if (2 * (keys_.size() + 1) > slots_.size()) reserve(2 * keys_.size() + 16);
  uint64_t h = hash(key);
  size_t slot = h & mask_;
  for (;; slot = (slot + 1) & mask_) {
    const Slot& s = slots_[slot];
    if (s.key == kEmpty) break;
    if (s.hash == h && keys_[s.key] == key) return false;
  }
  slots_[slot] = Slot{h, value, uint32_t(keys_.size())};
  keys_.push_back(std::move(key));
  return true;
}

namespace {

std::string optional_string(const Json& node, const char* key, std::string_view where) {
  if (!node.contains(key) || node.at(key).is_null()) return {};
  if (!node.at(key).is_string()) throw Error(std::string(where) + "." + key + ": expected a string");
  return node.at(key).get<std::string>();
}

std::string byte_token_name(unsigned b) {
  static const char* hex = "0123456789ABCDEF";
  return std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
}

}  // namespace

namespace {

// Moves vocab and merges out of the JSON model node (the slow path), validating their shapes.
void tables_from_json(const Json& node, const std::string& where, ModelTables& tables) {
  const Json& vocab = require_field(node, "vocab", where);
  if (!vocab.is_object()) throw Error(where + ".vocab: expected an object of token -> id");
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer())
      throw Error(where + ".vocab: token '" + it.key() + "' has an invalid id");
    tables.vocab.emplace_back(it.key(), it.value().get<int64_t>());
  }
  const Json& merges = require_field(node, "merges", where);
  if (!merges.is_array()) throw Error(where + ".merges: expected an array");
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const Json& m = merges[rank];
    if (m.is_string()) {
      tables.merges.push_back({m.get<std::string>(), {}, true});
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      tables.merges.push_back({m[0].get<std::string>(), m[1].get<std::string>(), false});
    } else {
      throw Error(where + ".merges[" + std::to_string(rank) + "]: expected \"left right\" or [left, right]");
    }
  }
  tables.present = true;
}

}  // namespace

BpeModel::BpeModel(const Json& node, ModelTables tables, std::string_view where_view) {
  std::string where(where_view);
  if (node.contains("dropout") && !node.at("dropout").is_null() &&
      (!node.at("dropout").is_number() || node.at("dropout").get<double>() != 0.0))
    throw Error(where + ".dropout: BPE dropout is random and not supported for inference");
  fuse_unk_ = optional_bool(node, "fuse_unk", false, where);
  byte_fallback_ = optional_bool(node, "byte_fallback", false, where);
  ignore_merges_ = optional_bool(node, "ignore_merges", false, where);
  continuing_subword_prefix_ = optional_string(node, "continuing_subword_prefix", where);
  end_of_word_suffix_ = optional_string(node, "end_of_word_suffix", where);
  unk_token_ = optional_string(node, "unk_token", where);
  if (!tables.present) tables_from_json(node, where, tables);

  vocab_.reserve(tables.vocab.size());
  for (auto& [token, id] : tables.vocab) {
    if (id < 0 || id > INT32_MAX) throw Error(where + ".vocab: token '" + token + "' has an invalid id");
    max_id_ = std::max(max_id_, id);
    if (!vocab_.emplace(std::move(token), int32_t(id)))
      throw Error(where + ".vocab: a token is listed twice");
  }
  id_to_token_.reserve(vocab_.size());
  vocab_.for_each([&](const std::string& token, int32_t id) {
    if (!id_to_token_.emplace(id, token).second)
      throw Error(where + ".vocab: id " + std::to_string(id) + " is used by two tokens");
  });

  if (!unk_token_.empty()) {
    const int32_t* id = vocab_.find(unk_token_);
    if (!id) throw Error(where + ".unk_token: '" + unk_token_ + "' is not in the vocabulary");
    unk_id_ = *id;
  }
  for (unsigned b = 0; b < 256; ++b) {
    const int32_t* id = vocab_.find(byte_token_name(b));
    byte_fallback_ids_[b] = id ? *id : -1;
  }

  merges_.reserve(tables.merges.size());
  std::string merged;
  for (size_t rank = 0; rank < tables.merges.size(); ++rank) {
    const ModelTables::Merge& m = tables.merges[rank];
    std::string_view left = m.left, right = m.right;
    if (m.spaced) {
      size_t space = left.find(' ');
      if (space == std::string_view::npos || left.find(' ', space + 1) != std::string_view::npos)
        throw Error(where + ".merges[" + std::to_string(rank) + "]: expected \"left right\", got \"" + m.left + "\"");
      right = left.substr(space + 1);
      left = left.substr(0, space);
    }
    auto find = [&](std::string_view token) {
      const int32_t* id = vocab_.find(token);
      if (!id)
        throw Error(where + ".merges[" + std::to_string(rank) + "]: token '" + std::string(token) +
                    "' is not in the vocabulary");
      return *id;
    };
    int32_t left_id = find(left), right_id = find(right);
    merged.assign(left);
    size_t prefix = continuing_subword_prefix_.size();
    if (prefix && right.starts_with(continuing_subword_prefix_)) merged.append(right.substr(prefix));
    else merged.append(right);
    merges_.insert(left_id, right_id, uint32_t(rank), find(merged));
  }
}

void BpeModel::enable_byte_level_input() {
  if (byte_level_ready_) return;
  byte_level_ready_ = true;
  // With subword affixes the per-byte shortcut does not hold; such models take the string path.
  byte_level_fast_ = continuing_subword_prefix_.empty() && end_of_word_suffix_.empty();
  if (!byte_level_fast_) return;
  const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::instance();
  for (unsigned b = 0; b < 256; ++b) {
    std::string ch;
    append_utf8(ch, alphabet.byte_to_cp[b]);
    const int32_t* id = vocab_.find(ch);
    byte_level_ids_[b] = id ? *id : -1;
  }
  if (ignore_merges_) {
    std::string bytes;
    byte_level_vocab_.reserve(vocab_.size());
    vocab_.for_each([&](const std::string& token, int32_t id) {
      if (byte_level_token_to_bytes(token, bytes)) byte_level_vocab_.emplace(bytes, id);
    });
  }
}

bool BpeModel::token_to_id(std::string_view token, int32_t& id) const {
  const int32_t* found = vocab_.find(token);
  if (!found) return false;
  id = *found;
  return true;
}

// HF's BPE::merge_word before merging: one symbol per character (with the subword prefix and
// word suffix), byte fallback for characters outside the vocabulary, unk (fused if asked).
void BpeModel::initial_symbols(std::string_view piece, std::vector<int32_t>& symbols) const {
  int32_t pending_unk = -1;
  std::string with_affixes;
  size_t i = 0;
  while (i < piece.size()) {
    size_t begin = i;
    next_code_point(piece, i);
    std::string_view ch = piece.substr(begin, i - begin);
    bool affixed = (begin != 0 && !continuing_subword_prefix_.empty()) || (i == piece.size() && !end_of_word_suffix_.empty());
    if (affixed) {
      with_affixes.clear();
      if (begin != 0) with_affixes += continuing_subword_prefix_;
      with_affixes += ch;
      if (i == piece.size()) with_affixes += end_of_word_suffix_;
      ch = with_affixes;
    }
    if (const int32_t* id = vocab_.find(ch)) {
      if (pending_unk >= 0) {
        symbols.push_back(pending_unk);
        pending_unk = -1;
      }
      symbols.push_back(*id);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : ch) all = all && byte_fallback_ids_[uint8_t(c)] >= 0;
      if (all) {
        for (char c : ch) symbols.push_back(byte_fallback_ids_[uint8_t(c)]);
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (pending_unk >= 0 && !fuse_unk_) symbols.push_back(pending_unk);
      pending_unk = unk_id_;
    }
  }
  if (pending_unk >= 0) symbols.push_back(pending_unk);
}

void BpeModel::tokenize(std::string_view piece, bool byte_level_input, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  std::vector<int32_t> symbols;
  symbols.reserve(piece.size());
  if (byte_level_input && !byte_level_fast_) {
    const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::instance();
    std::string chars;
    for (char c : piece) append_utf8(chars, alphabet.byte_to_cp[uint8_t(c)]);
    tokenize(chars, false, out);
    return;
  }
  if (byte_level_input) {
    if (ignore_merges_) {
      if (const int32_t* id = byte_level_vocab_.find(piece)) {
        out.push_back(*id);
        return;
      }
    }
    for (char c : piece) {
      int32_t id = byte_level_ids_[uint8_t(c)];
      if (id >= 0) symbols.push_back(id);
      else if (unk_id_ >= 0 && (!fuse_unk_ || symbols.empty() || symbols.back() != unk_id_)) symbols.push_back(unk_id_);
    }
  } else {
    if (ignore_merges_) {
      if (const int32_t* id = vocab_.find(piece)) {
        out.push_back(*id);
        return;
      }
    }
    initial_symbols(piece, symbols);
  }
  if (symbols.size() > 64) merge_long(symbols);
  else merge(symbols);
  out.insert(out.end(), symbols.begin(), symbols.end());
}

// Short words: keep the rank of every adjacent pair and rescan for the minimum.
void BpeModel::merge(std::vector<int32_t>& symbols) const {
  size_t n = symbols.size();
  if (n < 2) return;
  constexpr uint32_t kNone = UINT32_MAX;
  uint32_t ranks[64];
  int32_t merged_ids[64];
  auto rank_pair = [&](size_t i) {
    const MergeTable::Entry* e = merges_.find(symbols[i], symbols[i + 1]);
    ranks[i] = e ? e->rank : kNone;
    merged_ids[i] = e ? e->merged : -1;
  };
  for (size_t i = 0; i + 1 < n; ++i) rank_pair(i);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i)
      if (ranks[i] < ranks[best]) best = i;
    if (ranks[best] == kNone) break;
    symbols[best] = merged_ids[best];
    for (size_t i = best + 1; i + 1 < n; ++i) {
      symbols[i] = symbols[i + 1];
      ranks[i] = ranks[i + 1];
      merged_ids[i] = merged_ids[i + 1];
    }
    --n;
    if (best + 1 < n) rank_pair(best);
    else ranks[best] = kNone;
    if (best > 0) rank_pair(best - 1);
  }
  symbols.resize(n);
}

// Long words (SentencePiece-style text without a pre-tokenizer): a heap of candidate merges
// over a linked list of symbols, stale entries skipped when popped.
void BpeModel::merge_long(std::vector<int32_t>& symbols) const {
  size_t n = symbols.size();
  std::vector<int32_t> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = int32_t(i) - 1;
    next[i] = i + 1 < n ? int32_t(i + 1) : -1;
  }
  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t left, right;  // the pair this candidate was made for
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push = [&](int32_t pos) {
    int32_t right = next[pos];
    if (right < 0) return;
    if (const MergeTable::Entry* e = merges_.find(symbols[pos], symbols[right]))
      heap.push({e->rank, pos, symbols[pos], symbols[right]});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(int32_t(i));
  while (!heap.empty()) {
    Candidate c = heap.top();
    heap.pop();
    if (!alive[c.pos] || symbols[c.pos] != c.left) continue;
    int32_t right = next[c.pos];
    if (right < 0 || symbols[right] != c.right) continue;
    symbols[c.pos] = merges_.find(c.left, c.right)->merged;
    alive[right] = false;
    next[c.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.pos;
    if (prev[c.pos] >= 0) push(prev[c.pos]);
    push(c.pos);
  }
  size_t out = 0;
  for (int32_t i = 0; i >= 0; i = next[i]) symbols[out++] = symbols[i];
  symbols.resize(out);
}

}  // namespace headinfer::tok
