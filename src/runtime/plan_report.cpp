#include "headinfer/plan_report.h"

#include "headinfer/backend.h"
#include "headinfer/bandwidth.h"
#include "headinfer/dtype.h"
#include "headinfer/error.h"
#include "headinfer/model.h"
#include "headinfer/planner.h"
#include "headinfer/transfer.h"

namespace headinfer {
namespace {

// Element size of a dtype name as config.json or --kv-dtype spell it; 0 when unknown.
int64_t dtype_bytes(const std::string& name) {
  if (name == "bfloat16" || name == "bf16" || name == "float16" || name == "f16" || name == "fp16") return 2;
  if (name == "float32" || name == "f32" || name == "fp32") return 4;
  return 0;
}

// The weights' DType for the device's KV choice; unknown (e.g. quantised) names plan as bf16.
DType weight_dtype_of(const std::string& name) {
  if (name == "float16" || name == "f16" || name == "fp16") return DType::F16;
  if (name == "float32" || name == "f32" || name == "fp32") return DType::F32;
  return DType::BF16;
}

// Per layer: the window it keeps (0: the whole context), and the positions of a resident block.
std::vector<int64_t> window_list(const Plan& p) {
  std::vector<int64_t> out;
  for (const LayerKv& k : p.layers) out.push_back(k.window);
  return out;
}
std::vector<int64_t> device_positions(const Plan& p) {
  std::vector<int64_t> out;
  for (const LayerKv& k : p.layers) out.push_back(k.device_rows);
  return out;
}

}  // namespace

PlanReport plan_placement(const PlanRequest& r) {
  PlanReport report;
  report.source = r.source;
  report.offload = r.offload;
  report.config = r.parsed ? *r.parsed : parse_model_config(r.config, r.source);

  std::string dtype_name = "bfloat16";
  for (const char* key : {"torch_dtype", "dtype"})
    if (r.config.contains(key) && r.config[key].is_string()) dtype_name = r.config[key].get<std::string>();
  report.weight_elem_bytes = dtype_bytes(dtype_name);
  if (report.weight_elem_bytes == 0) report.weight_elem_bytes = 2;  // unknown (e.g. quantised) names: plan as bf16
  if (!r.kv_dtype.empty() && dtype_bytes(r.kv_dtype) == 0)
    throw Error("--kv-dtype: '" + r.kv_dtype + "' is not bf16, f16 or f32");

  PlannerInput pi;
  pi.config = report.config;
  pi.context = r.context;
  pi.weight_elem_bytes = report.weight_elem_bytes;
  pi.host_mem = r.host_mem > 0 ? r.host_mem : detect_host_memory();
  if (r.host_mem <= 0 && pi.host_mem == 0) throw Error("cannot read the host memory from /proc/meminfo: give --host-mem");
  pi.offload = r.offload;
  pi.kv_group = r.kv_group;
  pi.chunk = r.chunk;
  pi.hybrid = r.hybrid;
  if (r.link_gbps < 0) throw Error("--link-gbps must be positive");
  if (r.dram_gbps < 0) throw Error("--dram-gbps must be positive");

  // The device that will run, made only for its name, its KV dtype and its Transfer: with budget 0
  // (the CPU unlimited, CUDA the card's free memory) nothing is allocated on it but the link probe,
  // which the cap must not shrink (the cap is the plan's, the card is empty now).
  DeviceChoice choice = r.device;
  choice.gpu_mem = 0;
  auto device = make_device(choice);
  pi.gpu_mem = r.gpu_mem >= 0 ? r.gpu_mem : static_cast<int64_t>(device->memory_budget());
  report.device = device->name();
  if (!r.kv_dtype.empty()) {
    pi.kv_elem_bytes = dtype_bytes(r.kv_dtype);
    report.kv_elem_source = "--kv-dtype";
  } else {
    // What the engine stores on this device for these weights (Engine's with_kv_dtype).
    pi.kv_elem_bytes = static_cast<int64_t>(dtype_size(device->kv_dtype(weight_dtype_of(dtype_name))));
    report.kv_elem_source = "the device's KV dtype for " + dtype_name + " weights";
  }
  // Without flags: the link of this device's own Transfer (the CPU device's is the copy worker)
  // and the host attention read rate, each measured once and cached, the link under the device's
  // name exactly as make_planned_kv_cache keys it (bandwidth.h).
  auto transfer = device->make_transfer({});
  const HybridBandwidths bw = resolve_hybrid_bandwidths(*transfer, *device, device->name(), r.link_gbps,
                                                        pi.hybrid == HybridMode::Auto ? r.dram_gbps : -1.0, 0);
  pi.link_gbps = bw.link.gbps;
  report.link_source = bw.link.source;
  report.dram_source = bw.dram.source;
  if (pi.hybrid == HybridMode::Auto) pi.dram_gbps = bw.dram.gbps;
  const DType weight_dtype = weight_dtype_of(dtype_name);
  const int n = r.n_devices;
  if (n < 1) throw Error("--gpus must be at least 1");
  shard_slice(report.config, 0, n);  // the kv heads must split evenly
  if (n > 1) {  // one host for all the devices: its memory and its DRAM read rate are shared
    pi.host_mem /= n;
    pi.dram_gbps /= n;
  }
  for (int rank = 0; rank < n; ++rank) {
    DevicePlan d;
    d.rank = rank;
    d.slice = shard_slice(report.config, rank, n);
    PlannerInput dpi = pi;
    dpi.config = shard_config(report.config, rank, n);
    if (n > 1) dpi.weight_bytes = estimate_shard_weight_bytes(report.config, rank, n, report.weight_elem_bytes);
    // The activations count the device ops' scratch for each chunk size, as the engine counts them.
    dpi.scratch_bytes = [&device, cfg = dpi.config, weight_dtype](int64_t chunk, int64_t mlp_chunk) {
      return static_cast<int64_t>(device->ops().workspace_bytes(ops_workspace_sizes(cfg, {chunk, mlp_chunk}, weight_dtype)));
    };
    d.plan = make_plan(dpi);
    report.devices.push_back(std::move(d));
  }
  report.plan = report.devices[0].plan;
  for (const DevicePlan& d : report.devices) {
    if (d.plan.fits) continue;
    report.plan = d.plan;
    if (n > 1) report.plan.message = "device " + std::to_string(d.rank) + " of " + std::to_string(n) + ": " + d.plan.message;
    break;
  }
  return report;
}

nlohmann::json plan_report_json(const PlanReport& r) {
  const Plan& p = r.plan;
  // Each device: its share and what its memory and its link carry.
  nlohmann::json devices = nlohmann::json::array();
  for (const DevicePlan& d : r.devices)
    devices.push_back({{"rank", d.rank},
                       {"kv_head0", d.slice.kv_head0},
                       {"n_kv_heads", d.slice.n_kv_heads},
                       {"ffn0", d.slice.ffn0},
                       {"n_ffn", d.slice.n_ffn},
                       {"fits", d.plan.fits},
                       {"weight_bytes", d.plan.weight_bytes},
                       {"activation_bytes", d.plan.activation_bytes},
                       {"ring_bytes", d.plan.ring_bytes},
                       {"gpu_bytes_total", d.plan.gpu_bytes_total},
                       {"n_groups", d.plan.n_groups},
                       {"n_resident_groups", d.plan.n_resident_groups},
                       {"n_streamed_groups", d.plan.n_streamed_groups},
                       {"n_cpu_groups", d.plan.n_cpu_groups},
                       {"kv_bytes_gpu", d.plan.kv_bytes_gpu},
                       {"kv_bytes_host", d.plan.kv_bytes_host},
                       {"link_bytes_per_token", d.plan.link_bytes_per_token},
                       {"decode_seconds_per_token", d.plan.decode_seconds_per_token}});
  return {{"fits", p.fits},
          {"n_devices", static_cast<int64_t>(r.devices.size())},
          {"devices", devices},
          {"message", p.message},
          {"warnings", p.warnings},
          {"source", r.source},
          {"device", r.device},
          {"context", p.context},
          {"offload", offload_mode_name(r.offload)},
          {"kv_elem_bytes", p.kv_elem_bytes},
          {"kv_elem_source", r.kv_elem_source},
          {"weight_elem_bytes", r.weight_elem_bytes},
          {"group_size", p.group_size},
          {"groups_per_layer", p.groups_per_layer},
          {"n_groups", p.n_groups},
          {"n_resident_groups", p.n_resident_groups},
          {"n_streamed_groups", p.n_streamed_groups},
          {"ring_depth", p.ring_depth},
          {"chunk", p.chunk},
          {"mlp_chunk", p.mlp_chunk},
          {"chunk_reason", p.chunk_reason},
          {"resident", p.resident},
          {"kv_bytes_per_token", p.kv_bytes_per_token},
          {"head_block_bytes", p.head_block_bytes},
          {"group_block_bytes", p.group_block_bytes},
          {"kv_bytes_total", p.kv_bytes_total},
          {"kv_bytes_gpu", p.kv_bytes_gpu},
          {"kv_bytes_host", p.kv_bytes_host},
          {"kv_bytes_full", p.kv_bytes_full},
          {"window_saved_bytes", p.window_saved_bytes},
          {"n_window_layers", p.n_window_layers},
          {"layer_window", window_list(p)},
          {"layer_device_positions", device_positions(p)},
          {"slot_positions", p.slot_positions},
          {"host_slab_positions", p.host_slab_positions},
          {"host_slab_bytes", p.host_slab_bytes},
          {"weight_bytes", p.weight_bytes},
          {"activation_bytes", p.activation_bytes},
          {"ring_bytes", p.ring_bytes},
          {"gpu_bytes_total", p.gpu_bytes_total},
          {"gpu_mem", p.gpu_mem},
          {"host_mem", p.host_mem},
          {"link_bytes_per_token", p.link_bytes_per_token},
          {"link_gbps", p.link_gbps},
          {"link_gbps_source", r.link_source},
          {"decode_seconds_per_token", p.decode_seconds_per_token},
          {"hybrid", hybrid_mode_name(p.hybrid)},
          {"n_cpu_groups", p.n_cpu_groups},
          {"cpu_attended", p.cpu_attended},
          {"dram_gbps", p.dram_gbps},
          {"dram_gbps_source", r.dram_source},
          {"cpu_bytes_per_token", p.cpu_bytes_per_token},
          {"cpu_seconds_per_token", p.cpu_seconds_per_token},
          {"link_seconds_per_token", p.link_seconds_per_token},
          {"streaming_seconds_per_token", p.streaming_seconds_per_token}};
}

}  // namespace headinfer
