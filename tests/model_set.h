#pragma once
// The models every placement test runs (each shared tiny checkpoint, stories260k, then the
// repo's own tiny checkpoints of the other families, tests/data/families) and the seeded random
// prompts they are fed.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <random>
#include <vector>

#include "testdata.h"

namespace headinfer::test {

// gemma2, gemma3_text, phi3 and an explicit-head_dim mistral, f32 (made by
// scripts/make_family_models.py; their bf16 twins run the same code paths and stay out of the
// placement tests to keep them short).
inline std::vector<std::filesystem::path> family_models() {
  std::vector<std::filesystem::path> out;
  for (const auto& e : std::filesystem::directory_iterator(std::filesystem::path(HEADINFER_SOURCE_DIR) / "tests" /
                                                           "data" / "families"))
    if (e.is_directory() && e.path().filename().string().ends_with("-f32")) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

inline std::vector<std::filesystem::path> all_models() {
  std::vector<std::filesystem::path> out;
  for (const auto& e : std::filesystem::directory_iterator(testdata_dir() / "models" / "tiny")) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  out.push_back(testdata_dir() / "models" / "stories260k");
  for (const auto& f : family_models()) out.push_back(f);
  return out;
}

inline std::vector<int32_t> random_prompt(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = dist(rng);
  return ids;
}

}  // namespace headinfer::test
