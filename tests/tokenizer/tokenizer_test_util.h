#pragma once
// Helpers shared by the tokenizer tests: loading the shared tokenizers once per process and
// reading the vector files.
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "headinfer/tokenizer.h"
#include "testdata.h"

namespace headinfer::test {

inline std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// The shared tokenizers (llama2, mistral, llama3, qwen2) and stories260k, loaded on first use.
inline const Tokenizer& shared_tokenizer(const std::string& name) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    std::filesystem::path dir = name == "stories260k" ? testdata_dir() / "models" / "stories260k"
                                                      : testdata_dir() / "tokenizers" / name;
    it = cache.emplace(name, Tokenizer::from_model_dir(dir)).first;
  }
  return it->second;
}

inline std::string ids_to_string(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
  return s;
}

}  // namespace headinfer::test
