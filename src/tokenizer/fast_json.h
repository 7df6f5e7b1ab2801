#pragma once
// tokenizer.json reader: nlohmann's DOM parser takes ~0.4 s on Llama-3's 7 MB file, nearly all
// of it in model.vocab and model.merges. This reader parses those two directly into flat
// vectors and hands every other value to nlohmann, so loading stays well under 0.5 s.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "components.h"

namespace headinfer::tok {

struct ModelTables {
  bool present = false;  // false: vocab / merges are still inside the JSON model node
  std::vector<std::pair<std::string, int64_t>> vocab;
  // Either form of a merge: "a b" (second empty, `spaced` true) or ["a", "b"].
  struct Merge {
    std::string left;
    std::string right;
    bool spaced;  // left holds the whole "a b" string
  };
  std::vector<Merge> merges;
};

// Parses `text` into `root` with model.vocab and model.merges moved into `tables`. Returns false
// when the text is malformed or has any unexpected shape; the caller then parses it with
// nlohmann alone, which either reports a precise error or hands the odd shape to the
// validating generic path.
bool parse_tokenizer_json(std::string_view text, Json& root, ModelTables& tables);

}  // namespace headinfer::tok
