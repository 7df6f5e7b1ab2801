#pragma once
// The shared models every placement test runs (each tiny checkpoint, then stories260k) and the
// seeded random prompts they are fed.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <random>
#include <vector>

#include "testdata.h"

namespace headinfer::test {

inline std::vector<std::filesystem::path> all_models() {
  std::vector<std::filesystem::path> out;
  for (const auto& e : std::filesystem::directory_iterator(testdata_dir() / "models" / "tiny")) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  out.push_back(testdata_dir() / "models" / "stories260k");
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
