#pragma once
// What a user chooses, parsed the same way by every face (CLI flags, Python keyword arguments,
// server settings): byte sizes, counts, id lists, and the device. Errors name the option.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "headinfer/backend.h"

namespace headinfer {

// Byte sizes: "24GiB", "1TiB", "512MiB", "24GB" (decimal), "24G" (binary, as parse_count reads
// K/M/G), "1.5GiB", or a plain byte count. Throws Error naming `flag` for anything else, for zero,
// and for sizes past 2^62 bytes.
int64_t parse_byte_size(const std::string& text, const char* flag);
// "1,2,3" -> ids; throws Error naming `flag` on anything else.
std::vector<int32_t> parse_id_list(const std::string& text, const char* flag);
// "4096", "128K", "1M", "4M" (K = 1024) -> count; throws Error naming `flag`.
int64_t parse_count(const std::string& text, const char* flag);

struct DeviceChoice {
  std::string kind = "auto";  // cpu | cuda | auto (cuda when this build has it and a GPU is present)
  int threads = 0;            // CPU threads (0: every core)
  int64_t gpu_mem = 0;        // the device's byte budget; 0: CPU unlimited, CUDA the card's free memory
};

// Throws Error naming --device for an unknown kind, and for cuda on a build or machine without it.
std::unique_ptr<Device> make_device(const DeviceChoice& choice);
// The kind make_device(choice) makes, "cpu" or "cuda" (auto resolved; CUDA is GPU 0). Throws as
// make_device does.
std::string resolve_device_kind(const DeviceChoice& choice);
// Whether this build has the CUDA backend.
bool built_with_cuda();

}  // namespace headinfer
