#pragma once
// Minimal reader for the reference logits: numpy .npy v1/v2, little-endian float32, C order.
#include <cstdint>
#include <filesystem>
#include <vector>

namespace headinfer::test {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

NpyArray read_npy_f32(const std::filesystem::path& path);

}  // namespace headinfer::test
