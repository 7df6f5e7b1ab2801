#pragma once
// `--device cpu|cuda|auto` for the commands that run a model.
#include <cstdint>
#include <memory>
#include <string>

#include "headinfer/backend.h"

namespace headinfer::cli {

struct DeviceChoice {
  std::string kind = "auto";  // cpu | cuda | auto (cuda when this build has it and a GPU is present)
  int threads = 0;            // CPU threads (0: every core)
  int64_t gpu_mem = 0;        // the device's byte budget; 0: CPU unlimited, CUDA the card's free memory
};

// Throws Error naming --device for an unknown kind, and for cuda on a build or machine without it.
std::unique_ptr<Device> make_device(const DeviceChoice& choice);

}  // namespace headinfer::cli
