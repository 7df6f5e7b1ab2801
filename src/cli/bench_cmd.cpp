// `headinfer bench`: prefill of random tokens then greedy decode, per context length, on a
// built-in shape or a checkpoint folder (its weights, or random ones of its shape). Reports what
// ../shared/BENCH.md asks for: prefill seconds, median decode seconds per token, GPU peak bytes,
// host bytes, link bytes per token and the link GB/s that implies. --decode-only skips the
// prefill and fills the KV with random values instead (for contexts whose prefill would take too
// long); such rows carry "decode_only": true and no prefill figures.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/error.h"
#include "headinfer/options.h"
#include "headinfer/head_store.h"
#include "headinfer/planner.h"
#include "headinfer/random_model.h"
#include "progress.h"

namespace headinfer::cli {
namespace {

struct BenchArgs {
  std::string shape;
  std::string model_dir;
  bool random_weights = false;
  std::string dtype = "bf16";
  std::string contexts = "8K";
  int64_t n_decode = 32;
  int64_t repeat = 1;  // prefills per context on one engine: the first, then warm ones
  std::string gpu_mem;
  std::string host_mem;
  std::string offload = "auto";
  int64_t kv_group = 0;
  int64_t chunk = 0;  // 0: the planner chooses
  int threads = 0;
  std::string device = "auto";
  std::string hybrid = "off";
  uint64_t seed = 0;
  bool json = false;
  bool decode_only = false;
  bool no_graphs = false;
  float temperature = 0.0f;  // 0: greedy, argmax on the device
  int64_t top_k = 0;
  float top_p = 1.0f;
};

std::vector<int64_t> parse_contexts(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(parse_count(item, "--ctx"));
  if (out.empty()) throw Error("--ctx: give one or more context lengths, e.g. 8K,32K,128K");
  return out;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::unique_ptr<Checkpoint> load_bench_checkpoint(const BenchArgs& a, std::string* label) {
  if (!a.shape.empty() && !a.model_dir.empty()) throw Error("give --shape or -m, not both");
  DType dtype;
  if (a.dtype == "bf16") dtype = DType::BF16;
  else if (a.dtype == "f16") dtype = DType::F16;
  else if (a.dtype == "f32") dtype = DType::F32;
  else throw Error("--dtype must be bf16, f16 or f32");
  if (!a.shape.empty()) {
    *label = a.shape + " (random weights, " + a.dtype + ")";
    return Checkpoint::random(builtin_shape_config(a.shape), dtype, a.seed);
  }
  if (a.model_dir.empty()) throw Error("give --shape NAME or -m DIR");
  if (!a.random_weights) {
    *label = a.model_dir;
    return Checkpoint::open(a.model_dir);
  }
  *label = a.model_dir + " (random weights, " + a.dtype + ")";
  std::ifstream in(std::filesystem::path(a.model_dir) / "config.json");
  if (!in) throw Error(a.model_dir + "/config.json: cannot open");
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {  // parse_error, out_of_range (1E400)
    throw Error(a.model_dir + "/config.json: invalid JSON (" + std::string(e.what()) + ")");
  }
  return Checkpoint::random(config, dtype, a.seed);
}

void run_bench(const BenchArgs& a) {
  if (a.n_decode < 1) throw Error("--n-decode must be at least 1");
  if (a.repeat < 1) throw Error("--repeat must be at least 1");
  const SamplerOptions sampling{a.temperature, a.top_k, a.top_p, a.seed};
  if (a.temperature != 0.0f) Sampler{sampling};  // bad sampling flags fail before any work
  const std::vector<int64_t> contexts = parse_contexts(a.contexts);
  std::string label;
  const auto checkpoint = load_bench_checkpoint(a, &label);
  const ModelConfig& config = checkpoint->config();
  const int64_t gpu_mem = a.gpu_mem.empty() ? 0 : parse_byte_size(a.gpu_mem, "--gpu-mem");

  nlohmann::json results = nlohmann::json::array();
  std::string device_name;
  for (int64_t ctx : contexts) {
    auto device = make_device({a.device, a.threads, gpu_mem});
    device_name = device->name();
    EngineOptions eo;
    eo.context = ctx + a.n_decode;
    eo.chunk = a.chunk;
    eo.kv.gpu_mem = static_cast<int64_t>(device->memory_budget());
    eo.kv.hybrid = parse_hybrid_mode(a.hybrid, "--hybrid");
    eo.kv.host_mem = a.host_mem.empty() ? 0 : parse_byte_size(a.host_mem, "--host-mem");
    eo.kv.offload = parse_offload_mode(a.offload, "--offload");
    eo.kv.kv_group = a.kv_group;
    eo.step_graphs = !a.no_graphs;
    // The prompt's length is known before the engine is made (as in `generate`): its first chunk's
    // attention plans are built while the weights copy.
    if (!a.decode_only) eo.prompt_tokens = ctx;
    const auto t_load = std::chrono::steady_clock::now();
    Engine engine(*checkpoint, *device, eo);
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();

    std::mt19937_64 rng(a.seed + static_cast<uint64_t>(ctx));
    std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config.vocab_size - 1));
    int32_t next = 0;  // the greedy token of the last step
    double prefill_s = 0.0, fill_s = 0.0;
    std::vector<double> prefill_runs_s;  // every prefill in order: the first, then the warm ones
    const auto t0 = std::chrono::steady_clock::now();
    if (a.decode_only) {
      engine.fill_random_context(ctx, a.seed + static_cast<uint64_t>(ctx));
      fill_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      next = token(rng);  // random: there are no logits yet
    } else {
      std::vector<int32_t> prompt(static_cast<size_t>(ctx));
      for (int32_t& t : prompt) t = token(rng);
      // The first prefill of the engine is what a user waits for; later ones (same prompt, the KV
      // reset) show what is set-up cost, and their median is the warm figure.
      for (int64_t run = 0; run < a.repeat; ++run) {
        if (run > 0) engine.reset();
        ProgressReporter progress("prefill " + std::to_string(ctx));
        const auto p0 = std::chrono::steady_clock::now();
        next = argmax(engine.prefill(prompt, [&](int64_t d, int64_t n) { progress.update(d, n); }));
        prefill_runs_s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - p0).count());
      }
      prefill_s = prefill_runs_s[0];
    }

    std::unique_ptr<Sampler> sampler;
    if (a.temperature != 0.0f) sampler = std::make_unique<Sampler>(sampling);
    std::vector<double> step_s;
    for (int64_t i = 0; i < a.n_decode; ++i) {
      const auto s0 = std::chrono::steady_clock::now();
      // Picked on the device where it can (argmax or draw), the next step queued ahead, as generate does.
      const bool ahead = i + 1 < a.n_decode;
      if (sampler)
        next = engine.decode_sampled(next, *sampler, ahead);
      else
        next = engine.decode_greedy(next, ahead);
      step_s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count());
    }
    const double decode_s = median(step_s);
    const Plan* plan = kv_cache_plan(engine.kv_cache());
    const int64_t link_bytes = plan != nullptr ? plan->link_bytes_per_token : 0;
    nlohmann::json r = {{"context", ctx},
                        {"decode_only", a.decode_only},
                        {"step_graphs", engine.step_graphs()},
                        {"temperature", a.temperature},
                        {"prefill_seconds", prefill_s},
                        {"engine_setup_seconds", load_s},
                        {"chunk", engine.options().chunk},
                        {"mlp_chunk", engine.options().mlp_chunk},
                        {"prefill_tokens_per_second", static_cast<double>(ctx) / prefill_s},
                        {"decode_seconds_per_token", decode_s},
                        {"decode_tokens_per_second", 1.0 / decode_s},
                        {"gpu_peak_bytes", device->peak_bytes()},
                        {"host_bytes", kv_cache_host_peak_bytes(engine.kv_cache())},
                        {"link_bytes_per_token", link_bytes},
                        {"link_gbps_achieved", static_cast<double>(link_bytes) / decode_s / 1e9}};
    if (prefill_runs_s.size() > 1) {  // the warm prefills, after the first
      const std::vector<double> warm(prefill_runs_s.begin() + 1, prefill_runs_s.end());
      r["prefill_warm_all"] = warm;
      r["prefill_warm_seconds"] = median(warm);
    }
    if (a.decode_only) {
      r["prefill_seconds"] = nullptr;
      r["prefill_tokens_per_second"] = nullptr;
      r["random_fill_seconds"] = fill_s;
    }
    if (plan != nullptr) {
      r["cpu_groups"] = plan->n_cpu_groups;
      r["resident_groups"] = plan->n_resident_groups;
      r["streamed_groups"] = plan->n_streamed_groups;
      r["kv_group"] = plan->group_size;
    }
    results.push_back(r);
    if (!a.json && a.decode_only)
      std::printf("ctx %8lld  decode-only (random KV, filled in %.1f s)  ", static_cast<long long>(ctx), fill_s);
    else if (!a.json)
      std::printf("ctx %8lld  chunk %5lld  prefill %9.3f s (%8.0f tok/s)%s  ", static_cast<long long>(ctx),
                  static_cast<long long>(engine.options().chunk), prefill_s, static_cast<double>(ctx) / prefill_s,
                  prefill_runs_s.size() > 1
                      ? (", warm " + std::to_string(median({prefill_runs_s.begin() + 1, prefill_runs_s.end()})) + " s").c_str()
                      : "");
    if (!a.json)
      std::printf("decode %9.4f s/token (%7.2f tok/s)  GPU peak %7.2f GiB  "
                  "host %7.2f GiB  link %7.3f GiB/token (%6.2f GB/s)\n",
                  decode_s,
                  1.0 / decode_s, static_cast<double>(device->peak_bytes()) / (1 << 30),
                  static_cast<double>(kv_cache_host_peak_bytes(engine.kv_cache())) / (1 << 30),
                  static_cast<double>(link_bytes) / (1 << 30), static_cast<double>(link_bytes) / decode_s / 1e9);
  }
  if (a.json) {
    const nlohmann::json out = {{"model", label}, {"device", device_name}, {"n_decode", a.n_decode},
                                {"gpu_mem", gpu_mem},  {"offload", a.offload}, {"decode_only", a.decode_only},
                                {"results", results}};
    std::printf("%s\n", out.dump().c_str());
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand("bench", "Prefill random tokens, then decode; report speed and memory");
  std::string shapes;
  for (const std::string& s : builtin_shape_names()) shapes += (shapes.empty() ? "" : ", ") + s;
  cmd->add_option("--shape", args->shape, "Built-in shape with random weights: " + shapes);
  cmd->add_option("-m,--model", args->model_dir, "Checkpoint folder");
  cmd->add_flag("--random-weights", args->random_weights, "With -m: random weights of the folder's shape");
  cmd->add_option("--dtype", args->dtype, "Random weights' dtype: bf16, f16, f32")->capture_default_str();
  cmd->add_option("--ctx", args->contexts, "Context lengths: 8K,32K,128K")->capture_default_str();
  cmd->add_option("--n-decode", args->n_decode, "Tokens decoded after each prefill")->capture_default_str();
  cmd->add_option("--repeat", args->repeat,
                  "Prefills of each context on one engine (the KV reset between): prefill_seconds is the first, "
                  "prefill_warm_seconds the median of the rest")
      ->capture_default_str();
  cmd->add_option("--gpu-mem", args->gpu_mem, "Device memory cap: 24GiB (default: unlimited)");
  cmd->add_option("--host-mem", args->host_mem, "Host memory for the KV (default: detected)");
  cmd->add_option("--offload", args->offload, "auto, all or none")->capture_default_str();
  cmd->add_option("--kv-group", args->kv_group, "KV heads per transfer group (0: planner)")->capture_default_str();
  cmd->add_option("--chunk", args->chunk, "Prefill chunk in tokens (default: the planner chooses for --gpu-mem and the context)");
  cmd->add_option("-t,--threads", args->threads, "CPU threads (0: all cores)")->capture_default_str();
  cmd->add_option("--device", args->device, "cpu, cuda or auto (cuda when a GPU is present)")->capture_default_str();
  cmd->add_option("--hybrid", args->hybrid, "auto: attend part of the host-tier KV on the CPU during decode; off")
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "Seed of the random weights and tokens")->capture_default_str();
  cmd->add_flag("--json", args->json, "Print one JSON object");
  cmd->add_flag("--decode-only", args->decode_only,
                "Fill the KV with random values instead of prefilling, then decode (labelled decode-only)");
  cmd->add_option("--temp", args->temperature, "Decode by sampling at this temperature (0: greedy)")->capture_default_str();
  cmd->add_option("--top-k", args->top_k, "With --temp: keep the k most likely tokens (0: off)")->capture_default_str();
  cmd->add_option("--top-p", args->top_p, "With --temp: nucleus mass (1: off)")->capture_default_str();
  cmd->add_flag("--no-graphs", args->no_graphs, "Run decode steps op by op, without CUDA graphs (for comparison)");
  cmd->callback([args] { run_bench(*args); });
}

}  // namespace headinfer::cli
