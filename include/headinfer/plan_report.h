#pragma once
// The planner's answer for a model and a context, before any weight is loaded: what
// `headinfer plan` prints (table or --json) and what the Python face's plan() returns, built once.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "headinfer/config.h"
#include "headinfer/options.h"
#include "headinfer/planner.h"

namespace headinfer {

struct PlanRequest {
  // config.json's contents; its torch_dtype / dtype names the weights' element type (bf16 when
  // absent or not a float type, e.g. quantised).
  nlohmann::json config;
  std::optional<ModelConfig> parsed;  // already parsed (a folder's load_model_config); else from `config`
  std::string source;                 // names the model in the report and in errors
  DeviceChoice device;                // whose link is measured and whose KV dtype is planned (its gpu_mem unused)
  int64_t context = 0;
  int64_t gpu_mem = 0;                // 0: unlimited; < 0: the device's own budget (CUDA: the free memory)
  int64_t host_mem = 0;               // 0: MemAvailable (an Error when it cannot be read)
  double link_gbps = 0.0;             // 0: measured once and cached
  double dram_gbps = 0.0;             // 0: measured once and cached (hybrid auto only)
  HybridMode hybrid = HybridMode::Auto;
  std::string kv_dtype;               // "": the device's KV dtype for the weights
  OffloadMode offload = OffloadMode::Auto;
  int64_t kv_group = 0;
  int64_t chunk = 0;                  // 0: the planner chooses
  // Devices of one host the model is split over by kv head (--gpus, issue 16): each is planned on
  // its own, with the whole gpu_mem, the same link bandwidth (one link each), host_mem / n and
  // dram_gbps / n (the host's memory and its DRAM read rate are shared).
  int n_devices = 1;
};

// One device's share when the model is split (shard_slice) and its plan.
struct DevicePlan {
  int rank = 0;
  ShardSlice slice;
  Plan plan;
};

struct PlanReport {
  // With one device its plan; split over several, the first that does not fit, else device 0's.
  Plan plan;
  std::vector<DevicePlan> devices;  // [n_devices], each device's own plan
  ModelConfig config;
  OffloadMode offload = OffloadMode::Auto;
  int64_t weight_elem_bytes = 2;
  std::string source;
  std::string device;          // the device's name
  std::string kv_elem_source;  // where the KV element size came from
  std::string link_source;
  std::string dram_source;
};

// Throws Error for a bad config or option; a plan that does not fit is returned (fits == false).
PlanReport plan_placement(const PlanRequest& request);
// `headinfer plan --json`'s object.
nlohmann::json plan_report_json(const PlanReport& report);

}  // namespace headinfer
