// `headinfer plan`: the Planner's placement for a model and a context, as a table or JSON, before
// any weight is loaded. Exits non-zero (after printing the plan) when it does not fit.
// The link is measured with the Transfer of the device that will run (--device, as generate and
// bench pick it) and cached under that device's name, so plan and generate plan with one number.
#include <algorithm>
#include <cinttypes>
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
#include "headinfer/plan_report.h"
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
  int gpus = 1;       // devices of one host the kv heads are split over (issue 16)
  bool json = false;
};

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
  if (p.n_window_layers > 0) {
    // The window every trimmed layer keeps, and what one of their resident blocks holds.
    int64_t w = 0, rows = 0;
    for (const LayerKv& k : p.layers)
      if (k.window > 0) w = k.window, rows = k.device_rows;
    t += table_row("window layers", std::to_string(p.n_window_layers) + " of " + std::to_string(c.n_layers) +
                                         " keep their window of " + std::to_string(w) + " (" + std::to_string(rows) +
                                         " positions per resident head block)");
  }
  t += table_row("KV total", bytes_cell(p.kv_bytes_total));
  t += table_row("KV the window saves", bytes_cell(p.window_saved_bytes) + " of " + format_bytes(p.kv_bytes_full) +
                                            " (every layer at the whole context)");
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

// Split over several devices: what each one holds and what its own link carries per decoded token.
void print_devices(const PlanReport& r) {
  const auto n = static_cast<int64_t>(r.devices.size());
  std::string t = "per device (" + std::to_string(n) + " devices, each with its own link; the table above is device " +
                  std::to_string(r.devices[0].rank) + "'s plan" + (r.plan.fits ? "" : " or the first that does not fit") +
                  "):\n";
  int64_t link_total = 0;
  double decode = 0.0;
  for (const DevicePlan& d : r.devices) {
    const Plan& p = d.plan;
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "kv heads %" PRId64 "-%" PRId64 ", ffn rows %" PRId64 "-%" PRId64
                  "; weights %s, KV on GPU %s, KV on host %s, resident %" PRId64 " of %" PRId64
                  " groups; link %s per token; decode %.4f s per token%s",
                  d.slice.kv_head0, d.slice.kv_head0 + d.slice.n_kv_heads - 1, d.slice.ffn0,
                  d.slice.ffn0 + d.slice.n_ffn - 1, format_bytes(p.weight_bytes).c_str(),
                  format_bytes(p.kv_bytes_gpu).c_str(), format_bytes(p.kv_bytes_host).c_str(), p.n_resident_groups,
                  p.n_groups, format_bytes(p.link_bytes_per_token).c_str(), p.decode_seconds_per_token,
                  p.fits ? "" : " (does NOT fit)");
    t += table_row("device " + std::to_string(d.rank), buf);
    link_total += p.link_bytes_per_token;
    decode = std::max(decode, p.decode_seconds_per_token);
  }
  t += table_row("all links per decoded token", bytes_cell(link_total));
  char buf[128];
  std::snprintf(buf, sizeof buf, "%.4f s (the slowest device; the links run in parallel)", decode);
  t += table_row("predicted decode per token", buf);
  std::fputs(t.c_str(), stdout);
}

void run_plan(const PlanArgs& a) {
  if ((a.model_dir.empty() ? 0 : 1) + (a.config_path.empty() ? 0 : 1) + (a.shape.empty() ? 0 : 1) != 1)
    throw Error("give exactly one of -m DIR, --config FILE or --shape NAME");
  if (a.ctx.empty()) throw Error("give --ctx (for example --ctx 1M)");
  if (a.gpu_mem.empty()) throw Error("give --gpu-mem (for example --gpu-mem 24GiB)");

  // The raw config for its dtype key; the parsed one for the shapes.
  PlanRequest req;
  if (!a.shape.empty()) {
    req.config = builtin_shape_config(a.shape);
    req.config["torch_dtype"] = "bfloat16";  // bench's default --dtype for random weights
    req.source = "shape " + a.shape + " (bf16 weights)";
    req.parsed = parse_model_config(req.config, "shape " + a.shape);
  } else {
    std::filesystem::path config_file;
    if (!a.model_dir.empty()) {
      req.parsed = load_model_config(a.model_dir);
      config_file = std::filesystem::path(a.model_dir) / "config.json";
      req.source = a.model_dir;
    } else {
      config_file = a.config_path;
      if (std::filesystem::is_directory(config_file)) config_file /= "config.json";
      req.source = config_file.string();
    }
    std::ifstream in(config_file);
    if (!in) throw Error("cannot read " + config_file.string() + ": check the path");
    try {
      req.config = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw Error(config_file.string() + ": not valid JSON (" + e.what() + ")");
    }
  }
  req.device = {a.device, a.threads, 0};
  req.context = parse_count(a.ctx, "--ctx");
  req.gpu_mem = parse_byte_size(a.gpu_mem, "--gpu-mem");
  req.host_mem = a.host_mem.empty() ? 0 : parse_byte_size(a.host_mem, "--host-mem");
  req.link_gbps = a.link_gbps;
  req.dram_gbps = a.dram_gbps;
  req.hybrid = parse_hybrid_mode(a.hybrid, "--hybrid");
  req.kv_dtype = a.kv_dtype;
  req.offload = parse_offload_mode(a.offload, "--offload");
  req.kv_group = a.kv_group;
  req.chunk = a.chunk;
  req.n_devices = a.gpus;
  const PlanReport report = plan_placement(req);
  const Plan& p = report.plan;

  for (const std::string& w : p.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
  if (a.json) {
    std::printf("%s\n", plan_report_json(report).dump(2).c_str());
  } else {
    const TableLabels labels{report.source, report.device, report.kv_elem_source, report.link_source,
                             report.dram_source};
    print_table(p, report.config, labels, p.link_gbps, report.weight_elem_bytes, report.offload);
    if (report.devices.size() > 1) print_devices(report);
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
  cmd->add_option("--gpus", args->gpus,
                  "Devices of one host the kv heads are split over (each planned with --gpu-mem, its own link "
                  "and an equal share of --host-mem); must divide the kv heads")
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "Print the plan as JSON");
  cmd->callback([args] { run_plan(*args); });
}

}  // namespace headinfer::cli
