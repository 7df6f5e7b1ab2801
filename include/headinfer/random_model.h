#pragma once
// Built-in model shapes and random-weight checkpoints: the model the README's first command
// makes (no download needed), the tests' broken-file fixtures, and the benchmarks' real shapes.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "headinfer/dtype.h"

namespace headinfer {

// config.json of a built-in shape: tiny, llama3-8b, llama3.2-1b, qwen2.5-7b, mistral-7b.
nlohmann::json builtin_shape_config(const std::string& shape);
std::vector<std::string> builtin_shape_names();

// Writes DIR/config.json and DIR/model.safetensors with deterministic random weights
// (uniform in +-1/sqrt(fan_in), norms 1) for `config`.
void write_random_checkpoint(const std::filesystem::path& dir, const nlohmann::json& config, DType dtype,
                             uint64_t seed);

}  // namespace headinfer
