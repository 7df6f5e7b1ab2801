// `headinfer plan`: the Planner's placement for a model and a context, as a table or JSON, before
// any weight is loaded. Exits non-zero (after printing the plan) when it does not fit.
// The link is measured with the Transfer of the device that will run (--device, as generate and
// bench pick it) and cached under that device's name, so plan and generate plan with one number.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "headinfer/backend.h"
#include "headinfer/bandwidth.h"
#include "headinfer/checkpoint.h"
#include "headinfer/dtype.h"
#include "headinfer/error.h"
#include "headinfer/model.h"
#include "headinfer/options.h"
#include "headinfer/planner.h"
#include "headinfer/random_model.h"
#include "headinfer/transfer.h"

namespace headinfer::cli {
namespace {

struct PlanArgs {
  std::string model_dir;
  std::string config_path;
  std::string shape;  // built-in shape (random_model.h), planned with bf16 weights as bench makes them
  std::string device = "auto";
  int threads = 0;  // CPU device threads: part of its name, so of the link's cache key
  std::string ctx;
  std::string gpu_mem;
  std::string host_mem;
  double link_gbps = 0.0;
  double dram_gbps = 0.0;
  std::string hybrid = "auto";
  std::string kv_dtype;  // "" = from the config's torch_dtype / dtype
  std::string offload = "auto";
  int64_t kv_group = 0;
  int64_t chunk = 0;  // 0: the planner chooses
  bool json = false;
};

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

std::string table_row(const std::string& label, const std::string& value) {
  std::string row = "  " + label;
  row.resize(std::max<size_t>(row.size() + 1, 33), ' ');
  return row + value + "\n";
}

std::string bytes_cell(int64_t n) { return format_bytes(n) + "  (" + std::to_string(n) + " B)"; }

struct TableLabels {
  std::string source;        // the model: folder, config file or built-in shape
  std::string device;        // the device whose link and KV dtype were planned with
  std::string kv_elem_source;
  std::string link_source;
  std::string dram_source;
};

void print_table(const Plan& p, const ModelConfig& c, const TableLabels& l, double link_gbps, int64_t weight_elem,
                 OffloadMode mode) {
  std::string t;
  t += "plan for " + l.source + " (" + c.model_type + ", " + std::to_string(c.n_layers) + " layers, " +
       std::to_string(c.n_kv_heads) + " kv heads x " + std::to_string(c.head_dim) + ")\n";
  t += table_row("fits", p.fits ? "yes" : "NO");
  t += table_row("context", std::to_string(p.context) + " tokens");
  t += table_row("device", l.device);
  t += table_row("offload", offload_mode_name(mode));
  t += table_row("KV element", std::to_string(p.kv_elem_bytes) + " B (" + l.kv_elem_source + "); weights " +
                                   std::to_string(weight_elem) + " B");
  t += table_row("head group G", std::to_string(p.group_size) + " kv heads (" + std::to_string(p.groups_per_layer) +
                                     " groups per layer, " + std::to_string(p.n_groups) + " in all)");
  t += table_row("resident groups", std::to_string(p.n_resident_groups) + " of " + std::to_string(p.n_groups));
  t += table_row("streamed groups", std::to_string(p.n_streamed_groups));
  t += table_row("ring depth", std::to_string(p.ring_depth) + " slots");
  t += table_row("prefill chunk C", std::to_string(p.chunk) + " tokens (" + p.chunk_reason + ")");
  t += table_row("MLP sub-chunk", std::to_string(p.mlp_chunk) + " rows");
  t += table_row("KV per token", bytes_cell(p.kv_bytes_per_token));
  t += table_row("head block (K+V, full ctx)", bytes_cell(p.head_block_bytes));
  t += table_row("KV total", bytes_cell(p.kv_bytes_total));
  t += table_row("KV on GPU (resident)", bytes_cell(p.kv_bytes_gpu));
  t += table_row("KV on host", bytes_cell(p.kv_bytes_host));
  if (p.n_streamed_groups > 0)
    t += table_row("host slab (pinned as reached)", std::to_string(p.host_slab_positions) + " positions, " +
                                                         bytes_cell(p.host_slab_bytes) + " per group");
  t += table_row("weights", bytes_cell(p.weight_bytes));
  t += table_row("activations", bytes_cell(p.activation_bytes));
  t += table_row("ring", bytes_cell(p.ring_bytes));
  t += table_row("GPU total", bytes_cell(p.gpu_bytes_total));
  t += table_row("GPU cap (--gpu-mem)", p.gpu_mem > 0 ? bytes_cell(p.gpu_mem) : "unlimited");
  t += table_row("host memory", p.host_mem > 0 ? bytes_cell(p.host_mem) : "unlimited");
  t += table_row("link bytes per decoded token", bytes_cell(p.link_bytes_per_token));
  char buf[128];
  std::snprintf(buf, sizeof buf, "%.2f GB/s (%s)", link_gbps, l.link_source.c_str());
  t += table_row("link bandwidth", buf);
  t += table_row("hybrid decode", hybrid_mode_name(p.hybrid));
  if (p.hybrid == HybridMode::Auto) {
    t += table_row("CPU-attended groups", std::to_string(p.n_cpu_groups) + " of " +
                                              std::to_string(p.n_streamed_groups) + " host-tier groups");
    t += table_row("CPU reads per decoded token", bytes_cell(p.cpu_bytes_per_token));
    std::snprintf(buf, sizeof buf, "%.2f GB/s (%s)", p.dram_gbps, l.dram_source.c_str());
    t += table_row("host read bandwidth", buf);
    std::snprintf(buf, sizeof buf, "%.4f s link, %.4f s CPU", p.link_seconds_per_token, p.cpu_seconds_per_token);
    t += table_row("decode parts per token", buf);
    std::snprintf(buf, sizeof buf, "%.4f s (streaming only)", p.streaming_seconds_per_token);
    t += table_row("without hybrid", buf);
  }
  std::snprintf(buf, sizeof buf, "%.4f s (at full context)", p.decode_seconds_per_token);
  t += table_row("predicted decode per token", buf);
  if (p.n_groups <= 512 && p.n_streamed_groups > 0 && (p.n_resident_groups > 0 || p.n_cpu_groups > 0)) {
    std::string map;
    for (int64_t i = 0; i < p.n_groups; ++i)
      map += p.resident[static_cast<size_t>(i)] != 0 ? 'R' : p.cpu_attended[static_cast<size_t>(i)] != 0 ? 'C' : '.';
    t += table_row("placement (R resident, C CPU)", map);
  }
  std::fputs(t.c_str(), stdout);
}

void run_plan(const PlanArgs& a) {
  if ((a.model_dir.empty() ? 0 : 1) + (a.config_path.empty() ? 0 : 1) + (a.shape.empty() ? 0 : 1) != 1)
    throw Error("give exactly one of -m DIR, --config FILE or --shape NAME");
  if (a.ctx.empty()) throw Error("give --ctx (for example --ctx 1M)");
  if (a.gpu_mem.empty()) throw Error("give --gpu-mem (for example --gpu-mem 24GiB)");

  // The raw config for its dtype key; the parsed one for the shapes.
  ModelConfig config;
  std::string source;
  nlohmann::json j;
  if (!a.shape.empty()) {
    j = builtin_shape_config(a.shape);
    j["torch_dtype"] = "bfloat16";  // bench's default --dtype for random weights
    config = parse_model_config(j, "shape " + a.shape);
    source = "shape " + a.shape + " (bf16 weights)";
  } else {
    std::filesystem::path config_file;
    if (!a.model_dir.empty()) {
      config = load_model_config(a.model_dir);
      config_file = std::filesystem::path(a.model_dir) / "config.json";
      source = a.model_dir;
    } else {
      config_file = a.config_path;
      if (std::filesystem::is_directory(config_file)) config_file /= "config.json";
      source = config_file.string();
    }
    std::ifstream in(config_file);
    if (!in) throw Error("cannot read " + config_file.string() + ": check the path");
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw Error(config_file.string() + ": not valid JSON (" + e.what() + ")");
    }
    if (a.model_dir.empty()) config = parse_model_config(j, config_file.string());
  }

  std::string dtype_name = "bfloat16";
  for (const char* key : {"torch_dtype", "dtype"})
    if (j.contains(key) && j[key].is_string()) dtype_name = j[key].get<std::string>();
  int64_t weight_elem = dtype_bytes(dtype_name);
  if (weight_elem == 0) weight_elem = 2;  // unknown (e.g. quantised) names: plan as bf16
  if (!a.kv_dtype.empty() && dtype_bytes(a.kv_dtype) == 0)
    throw Error("--kv-dtype: '" + a.kv_dtype + "' is not bf16, f16 or f32");

  PlannerInput pi;
  pi.config = config;
  pi.context = parse_count(a.ctx, "--ctx");
  pi.weight_elem_bytes = weight_elem;
  pi.gpu_mem = parse_byte_size(a.gpu_mem, "--gpu-mem");
  pi.host_mem = a.host_mem.empty() ? detect_host_memory() : parse_byte_size(a.host_mem, "--host-mem");
  if (a.host_mem.empty() && pi.host_mem == 0)
    throw Error("cannot read the host memory from /proc/meminfo: give --host-mem");
  pi.offload = parse_offload_mode(a.offload, "--offload");
  pi.kv_group = a.kv_group;
  pi.chunk = a.chunk;
  pi.hybrid = parse_hybrid_mode(a.hybrid, "--hybrid");
  if (a.link_gbps < 0) throw Error("--link-gbps must be positive");
  if (a.dram_gbps < 0) throw Error("--dram-gbps must be positive");

  // The device that will run, made only for its name, its KV dtype and its Transfer: with budget 0
  // (the CPU unlimited, CUDA the card's free memory) nothing is allocated on it but the link probe,
  // which --gpu-mem must not shrink (the cap is the plan's, the card is empty now).
  auto device = make_device({a.device, a.threads, 0});
  TableLabels labels;
  labels.source = source;
  labels.device = device->name();
  if (!a.kv_dtype.empty()) {
    pi.kv_elem_bytes = dtype_bytes(a.kv_dtype);
    labels.kv_elem_source = "--kv-dtype";
  } else {
    // What the engine stores on this device for these weights (Engine's with_kv_dtype).
    pi.kv_elem_bytes = static_cast<int64_t>(dtype_size(device->kv_dtype(weight_dtype_of(dtype_name))));
    labels.kv_elem_source = "the device's KV dtype for " + dtype_name + " weights";
  }
  // Without flags: the link of this device's own Transfer (the CPU device's is the copy worker)
  // and the host attention read rate, each measured once and cached, the link under the device's
  // name exactly as make_planned_kv_cache keys it (bandwidth.h).
  auto transfer = device->make_transfer({});
  const HybridBandwidths bw = resolve_hybrid_bandwidths(*transfer, *device, device->name(), a.link_gbps,
                                                        pi.hybrid == HybridMode::Auto ? a.dram_gbps : -1.0, 0);
  pi.link_gbps = bw.link.gbps;
  labels.link_source = bw.link.source;
  labels.dram_source = bw.dram.source;
  if (pi.hybrid == HybridMode::Auto) pi.dram_gbps = bw.dram.gbps;
  // The activations count the device ops' scratch for each chunk size, as the engine counts them.
  const DType weight_dtype = weight_dtype_of(dtype_name);
  pi.scratch_bytes = [&](int64_t chunk, int64_t mlp_chunk) {
    return static_cast<int64_t>(
        device->ops().workspace_bytes(ops_workspace_sizes(config, {chunk, mlp_chunk}, weight_dtype)));
  };
  const Plan p = make_plan(pi);

  for (const std::string& w : p.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
  if (a.json) {
    nlohmann::json out = {{"fits", p.fits},
                          {"message", p.message},
                          {"warnings", p.warnings},
                          {"source", source},
                          {"device", labels.device},
                          {"context", p.context},
                          {"offload", offload_mode_name(pi.offload)},
                          {"kv_elem_bytes", p.kv_elem_bytes},
                          {"kv_elem_source", labels.kv_elem_source},
                          {"weight_elem_bytes", weight_elem},
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
                          {"link_gbps_source", labels.link_source},
                          {"decode_seconds_per_token", p.decode_seconds_per_token},
                          {"hybrid", hybrid_mode_name(p.hybrid)},
                          {"n_cpu_groups", p.n_cpu_groups},
                          {"cpu_attended", p.cpu_attended},
                          {"dram_gbps", p.dram_gbps},
                          {"dram_gbps_source", bw.dram.source},
                          {"cpu_bytes_per_token", p.cpu_bytes_per_token},
                          {"cpu_seconds_per_token", p.cpu_seconds_per_token},
                          {"link_seconds_per_token", p.link_seconds_per_token},
                          {"streaming_seconds_per_token", p.streaming_seconds_per_token}};
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    print_table(p, config, labels, p.link_gbps, weight_elem, pi.offload);
  }
  std::fflush(stdout);
  if (!p.fits) throw Error("does not fit: " + p.message);
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto args = std::make_shared<PlanArgs>();
  CLI::App* cmd = app.add_subcommand("plan", "Plan the KV placement for a model and a context (no weights loaded)");
  cmd->add_option("-m,--model", args->model_dir, "Checkpoint folder (its config.json)");
  cmd->add_option("--config", args->config_path, "A config.json (or a folder holding one)");
  std::string shapes;
  for (const std::string& s : builtin_shape_names()) shapes += (shapes.empty() ? "" : ", ") + s;
  cmd->add_option("--shape", args->shape, "Built-in shape with bf16 weights (as bench makes them): " + shapes);
  cmd->add_option("--device", args->device,
                  "The device that will run: cpu, cuda or auto (cuda when a GPU is present); its link is measured "
                  "and its KV dtype planned")
      ->capture_default_str();
  cmd->add_option("-t,--threads", args->threads, "CPU device threads (0: all cores), as generate's -t")
      ->capture_default_str();
  cmd->add_option("--ctx", args->ctx, "Context length: 4096, 128K, 1M, 4M");
  cmd->add_option("--gpu-mem", args->gpu_mem, "GPU memory cap: 24GiB, 80GB");
  cmd->add_option("--host-mem", args->host_mem, "Host memory for offloaded KV (default: MemAvailable)");
  cmd->add_option("--link-gbps", args->link_gbps,
                  "Host-to-device bandwidth in GB/s (default: the device's link, measured once, cached)");
  cmd->add_option("--dram-gbps", args->dram_gbps, "Host attention KV read rate in GB/s (default: measured once, cached)");
  cmd->add_option("--hybrid", args->hybrid, "Decode: attend part of the host-tier groups on the CPU: auto or off")
      ->capture_default_str();
  cmd->add_option("--kv-dtype", args->kv_dtype,
                  "KV element type: bf16, f16, f32 (default: what the device stores for the weights' dtype)");
  cmd->add_option("--offload", args->offload, "auto, all or none")->capture_default_str();
  cmd->add_option("--kv-group", args->kv_group, "kv heads per transfer group (0: planner picks)")->capture_default_str();
  cmd->add_option("--chunk", args->chunk, "Prefill chunk in tokens (default: the planner chooses for --gpu-mem and the context)");
  cmd->add_flag("--json", args->json, "Print the plan as JSON");
  cmd->callback([args] { run_plan(*args); });
}

}  // namespace headinfer::cli
