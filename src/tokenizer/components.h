#pragma once
// The pipeline stages of a tokenizer.json, as Hugging Face tokenizers runs them:
// added-token split -> normalizer -> pre-tokenizer -> model -> post-processor, and
// decoders for the way back. Each stage is built from its JSON node by a make_* function that
// throws headinfer::Error naming the unsupported component or the malformed field.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "hf_regex.h"

namespace headinfer::tok {

using Json = nlohmann::json;

// --- JSON field access with errors that name the field path ----------------------------------
const Json& require_field(const Json& node, const char* key, std::string_view where);
std::string require_string(const Json& node, const char* key, std::string_view where);
bool optional_bool(const Json& node, const char* key, bool fallback, std::string_view where);
// A token id as the files write it: a non-negative integer within int32 (ids are int32 throughout).
bool is_token_id(const Json& value);
std::string type_of(const Json& node, std::string_view where);
// A {"String": s} or {"Regex": r} pattern node: fills exactly one of `literal` and `regex`.
void parse_pattern(const Json& node, std::string_view where, std::string& literal,
                   std::unique_ptr<Regex>& regex);

// --- Normalizers ------------------------------------------------------------------------------
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};
std::unique_ptr<Normalizer> make_normalizer(const Json& node, std::string_view where);

// --- Pre-tokenizers ---------------------------------------------------------------------------
// A pre-token: bytes [begin, end) of PieceList::text. `at_text_start` marks the piece that begins
// at offset 0 of the original input (Metaspace's prepend_scheme "first" needs it).
struct Piece {
  size_t begin;
  size_t end;
  bool at_text_start;
};

struct PieceList {
  std::string text;
  std::vector<Piece> pieces;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(PieceList& list) const = 0;
  // True for ByteLevel: the model then receives raw bytes, each standing for its byte-level
  // character (the mapping is applied inside the BPE model, never materialised).
  virtual bool maps_to_byte_level() const { return false; }
};
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& node, std::string_view where);

// --- Decoders ---------------------------------------------------------------------------------
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};
std::unique_ptr<Decoder> make_decoder(const Json& node, std::string_view where);

// --- Post-processors --------------------------------------------------------------------------
class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Applied only when special tokens are requested; `ids` is the encoded single sequence.
  virtual void process(std::vector<int32_t>& ids) const = 0;
  // Ids the processor puts in front of a single sequence (the BOS of Llama, say).
  virtual std::vector<int32_t> prefix_ids() const = 0;
};
std::unique_ptr<PostProcessor> make_post_processor(const Json& node, std::string_view where);

// --- Byte-level alphabet (GPT-2's bytes_to_unicode) -------------------------------------------
// byte -> the code point standing for it, and back (-1 where a code point stands for no byte).
struct ByteLevelAlphabet {
  uint32_t byte_to_cp[256];
  int cp_to_byte_table[512];  // the alphabet lies below U+0200
  static const ByteLevelAlphabet& instance();
  int cp_to_byte(uint32_t cp) const;  // -1 when cp is not in the alphabet
};

// The raw bytes a byte-level token stands for; false when it contains a foreign character.
bool byte_level_token_to_bytes(std::string_view token, std::string& bytes);

}  // namespace headinfer::tok
