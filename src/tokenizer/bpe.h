#pragma once
// The BPE model of tokenizer.json: vocabulary, ranked merges, byte fallback, unk handling.
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "components.h"
#include "fast_json.h"

namespace headinfer::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using StringToId = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// string -> id for the large vocabularies: open addressing over (hash, key index) slots, keys
// stored once in a flat vector. Several times faster to build and probe than unordered_map,
// which matters for the 0.5 s load budget (Llama-3: 128k tokens, 280k merges to resolve).
class StringIdMap {
 public:
  void reserve(size_t n);
  bool emplace(std::string key, int32_t value);  // false when the key is already present
  const int32_t* find(std::string_view key) const {
    if (slots_.empty()) return nullptr;
    uint64_t h = hash(key);
    for (size_t slot = h & mask_;; slot = (slot + 1) & mask_) {
      const Slot& s = slots_[slot];
      if (s.key == kEmpty) return nullptr;
      if (s.hash == h && keys_[s.key] == key) return &s.value;
    }
  }
  size_t size() const { return keys_.size(); }
  template <typename F>
  void for_each(F&& f) const {
    for (const Slot& s : slots_)
      if (s.key != kEmpty) f(keys_[s.key], s.value);
  }

  static uint64_t hash(std::string_view key) {
    uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a, then a final mix
    for (char c : key) h = (h ^ uint8_t(c)) * 0x100000001b3ULL;
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ULL;
    return h ^ (h >> 32);
  }

 private:
  static constexpr uint32_t kEmpty = UINT32_MAX;
  struct Slot {
    uint64_t hash;
    int32_t value;
    uint32_t key;  // index into keys_, kEmpty when free
  };
  void grow();
  std::vector<Slot> slots_;  // power-of-two size, at most half full
  std::vector<std::string> keys_;
  size_t mask_ = 0;
};

// (left id, right id) -> (rank, merged id); open addressing, sized at load.
class MergeTable {
 public:
  struct Entry {
    uint64_t key;  // (uint64(left) << 32) | uint32(right); kEmpty when free
    uint32_t rank;
    int32_t merged;
  };
  static constexpr uint64_t kEmpty = ~uint64_t(0);

  void reserve(size_t n);
  void insert(int32_t left, int32_t right, uint32_t rank, int32_t merged);
  const Entry* find(int32_t left, int32_t right) const {
    uint64_t key = (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
    for (size_t slot = hash(key) & mask_;; slot = (slot + 1) & mask_) {
      const Entry& e = slots_[slot];
      if (e.key == key) return &e;
      if (e.key == kEmpty) return nullptr;
    }
  }

 private:
  static uint64_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return k;
  }
  std::vector<Entry> slots_;  // power-of-two size, at most half full
  size_t mask_ = 0;
};

class BpeModel {
 public:
  // `node` is the "model" object; its vocab and merges come from `tables` when the fast reader
  // extracted them. Throws headinfer::Error on any inconsistency.
  BpeModel(const Json& node, ModelTables tables, std::string_view where);

  // Builds the raw-bytes views used when the pre-tokenizer is ByteLevel.
  void enable_byte_level_input();

  // Appends the ids of one pre-token. With byte-level input, `piece` holds raw bytes that each
  // stand for their byte-level character.
  void tokenize(std::string_view piece, bool byte_level_input, std::vector<int32_t>& out) const;

  size_t vocab_size() const { return size_t(max_id_ + 1); }  // largest id + 1
  size_t vocab_count() const { return vocab_.size(); }        // number of tokens
  const std::string* id_to_token(int32_t id) const {
    const auto it = id_to_token_.find(id);
    return it == id_to_token_.end() ? nullptr : &it->second;
  }
  bool token_to_id(std::string_view token, int32_t& id) const;

 private:
  void initial_symbols(std::string_view piece, std::vector<int32_t>& symbols) const;
  void merge(std::vector<int32_t>& symbols) const;
  void merge_long(std::vector<int32_t>& symbols) const;

  StringIdMap vocab_;
  // Keyed by id, as tokenizers' vocab_r: ids need not be dense (a table of [max id + 1] strings
  // for one token of id 1111111111 asked for 35 GB; fuzz_tokenizer_load found it).
  std::unordered_map<int32_t, std::string> id_to_token_;
  int64_t max_id_ = -1;
  MergeTable merges_;
  std::string unk_token_;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  int32_t byte_fallback_ids_[256];  // id of "<0xXX>", -1 when absent

  bool byte_level_ready_ = false;
  bool byte_level_fast_ = false;
  int32_t byte_level_ids_[256];  // id of the byte-level character of each byte, -1 when absent
  StringIdMap byte_level_vocab_;  // raw bytes of each byte-level token -> id (ignore_merges)
};

}  // namespace headinfer::tok
