#include "placement_flags.h"

#include "headinfer/options.h"
#include "headinfer/planner.h"

namespace headinfer::cli {

void add_placement_flags(CLI::App& cmd, PlacementFlags& f) {
  cmd.add_option("-t,--threads", f.threads, "CPU threads (0: all cores)")->capture_default_str();
  cmd.add_option("--device", f.device, "cpu, cuda or auto (cuda when a GPU is present)")->capture_default_str();
  cmd.add_option("--gpu-mem", f.gpu_mem, "Device memory cap: 24GiB (default: CUDA the free memory, CPU unlimited)");
  cmd.add_option("--host-mem", f.host_mem, "Host memory for offloaded KV (default: MemAvailable)");
  cmd.add_option("--offload", f.offload, "KV placement: auto, all or none")->capture_default_str();
  cmd.add_option("--kv-group", f.kv_group, "kv heads per transfer group (0: planner picks)")->capture_default_str();
  cmd.add_option("--hybrid", f.hybrid,
                 "Decode: attend part of the host-tier KV on the CPU while the rest streams (auto or off)")
      ->capture_default_str();
}

std::unique_ptr<Device> make_placement_device(const PlacementFlags& f) {
  const int64_t gpu_mem = f.gpu_mem.empty() ? 0 : parse_byte_size(f.gpu_mem, "--gpu-mem");
  return make_device({f.device, f.threads, gpu_mem});
}

KvPlacementOptions placement_options(const PlacementFlags& f, const Device& device) {
  KvPlacementOptions kv;
  kv.gpu_mem = static_cast<int64_t>(device.memory_budget());
  kv.host_mem = f.host_mem.empty() ? 0 : parse_byte_size(f.host_mem, "--host-mem");
  kv.offload = parse_offload_mode(f.offload, "--offload");
  kv.kv_group = f.kv_group;
  kv.hybrid = parse_hybrid_mode(f.hybrid, "--hybrid");
  return kv;
}

}  // namespace headinfer::cli
