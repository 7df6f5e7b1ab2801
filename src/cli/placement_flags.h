#pragma once
// The flags of every command that builds an Engine on a device (generate, serve): the device and
// where the KV lives. Parsed by the core's option parsers (headinfer/options.h).
#include <cstdint>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "headinfer/backend.h"
#include "headinfer/head_store.h"

namespace headinfer::cli {

struct PlacementFlags {
  int threads = 0;
  std::string device = "auto";  // cpu | cuda | auto
  std::string gpu_mem;          // "" = CPU: unlimited; CUDA: the card's free memory
  std::string host_mem;         // "" = detected
  std::string offload = "auto";
  int64_t kv_group = 0;         // 0 = the planner picks
  std::string hybrid = "off";   // decode: attend part of the host-tier groups on the CPU
};

void add_placement_flags(CLI::App& cmd, PlacementFlags& flags);
// The device, its byte budget the --gpu-mem cap.
std::unique_ptr<Device> make_placement_device(const PlacementFlags& flags);
// The KV placement on `device`: the planner plans against the device's own budget, so the two
// cannot disagree.
KvPlacementOptions placement_options(const PlacementFlags& flags, const Device& device);

}  // namespace headinfer::cli
