// Checkpoint::from_memory: a checkpoint over tensors the caller owns (the Python face's
// state_dict through DLPack), validated as a safetensors file is, so Model cannot tell the
// difference except that tensors already on the engine's device are used in place.
#include <cstdint>

#include <nlohmann/json.hpp>

#include "headinfer/checkpoint.h"
#include "headinfer/error.h"

namespace headinfer {

std::unique_ptr<Checkpoint> Checkpoint::from_memory(const nlohmann::json& config,
                                                    const nlohmann::json& generation_config,
                                                    std::vector<TensorView> tensors, const std::string& origin) {
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  ckpt->dir_ = origin;
  ckpt->config_ = parse_model_config(config, origin + " config");
  if (!generation_config.is_null())
    apply_generation_config(ckpt->config_, generation_config, origin + " generation config");
  ckpt->memory_views_ = std::move(tensors);
  for (TensorView& t : ckpt->memory_views_) {
    if (t.file.empty()) t.file = origin;
    const std::string what = t.file + ": tensor '" + t.name + "' " + t.shape_string();
    for (int64_t d : t.shape)
      if (d < 0) throw Error(what + " has a negative dimension");
    const auto expected = static_cast<size_t>(t.numel()) * dtype_size(t.dtype);
    if (t.nbytes != expected)
      throw Error(what + " holds " + std::to_string(t.nbytes) + " bytes, its shape and dtype need " +
                  std::to_string(expected));
    if (t.data == nullptr && t.nbytes > 0) throw Error(what + " has no data");
    // Kernels read weights with wide loads; torch's allocators give 64 (CPU) and 512 (CUDA) bytes.
    if (t.on_device && reinterpret_cast<uintptr_t>(t.data) % 64 != 0)
      throw Error(what + " starts at a device address not aligned to 64 bytes (pass a contiguous copy)");
    auto [it, inserted] = ckpt->by_name_.emplace(t.name, &t);
    if (!inserted) throw Error(what + " is given twice");
  }
  return ckpt;
}

}  // namespace headinfer
