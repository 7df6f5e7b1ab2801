// `headinfer generate`: load a checkpoint folder, run a prompt, print the continuation.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/error.h"
#include "parse_util.h"

namespace headinfer::cli {
namespace {

struct GenerateArgs {
  std::string model_dir;
  std::string prompt_ids;
  int64_t n_new = 32;
  float temperature = 0.0f;
  int64_t top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  std::string ctx;  // "" = prompt + n
  bool ignore_eos = false;
  bool json = false;
  int threads = 0;
  int64_t chunk = 512;
};

void run_generate(const GenerateArgs& a) {
  std::vector<int32_t> prompt = parse_id_list(a.prompt_ids, "--prompt-ids");
  if (prompt.empty()) throw Error("no prompt: give --prompt-ids");
  if (a.n_new < 0) throw Error("-n must be >= 0");

  auto checkpoint = Checkpoint::open(a.model_dir);
  const ModelConfig& config = checkpoint->config();
  for (int32_t id : prompt)
    if (id < 0 || id >= config.vocab_size)
      throw Error("--prompt-ids: token id " + std::to_string(id) + " is outside the vocabulary (" +
                  std::to_string(config.vocab_size) + " tokens)");

  const auto n_prompt = static_cast<int64_t>(prompt.size());
  const int64_t context = a.ctx.empty() ? n_prompt + std::max<int64_t>(a.n_new, 1) : parse_count(a.ctx, "--ctx");
  if (n_prompt > context)
    throw Error("prompt of " + std::to_string(n_prompt) + " tokens is longer than --ctx " + std::to_string(context));
  if (context > config.max_position_embeddings)
    std::fprintf(stderr, "warning: context %lld is beyond the config's max_position_embeddings (%lld)\n",
                 static_cast<long long>(context), static_cast<long long>(config.max_position_embeddings));

  auto device = make_cpu_device({a.threads, 0});
  EngineOptions eo;
  eo.context = context;
  eo.chunk = a.chunk;
  Engine engine(*checkpoint, *device, eo);

  GenerateOptions go;
  go.max_new_tokens = a.n_new;
  go.ignore_eos = a.ignore_eos;
  go.sampling = {a.temperature, a.top_k, a.top_p, a.seed};
  GenerateCallbacks cb;
  if (!a.json) {
    cb.on_token = [](int32_t id) {
      std::printf("%d ", id);
      std::fflush(stdout);
    };
  }
  const GenerateResult r = generate(engine, prompt, go, cb);

  if (a.json) {
    nlohmann::json out = {{"prompt_tokens", r.prompt_tokens},
                          {"tokens", r.tokens},
                          {"prefill_seconds", r.prefill_seconds},
                          {"decode_seconds", r.decode_seconds},
                          {"decode_tokens_per_second", r.decode_tokens_per_second()},
                          {"stopped_at_eos", r.stopped_at_eos},
                          {"stopped_at_context", r.stopped_at_context},
                          {"context", context},
                          {"device", device->name()},
                          {"device_peak_bytes", device->peak_bytes()}};
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("\n");
    std::fprintf(stderr, "prompt %lld tokens, prefill %.3f s (%.1f tok/s); %zu tokens generated, %.2f tok/s%s\n",
                 static_cast<long long>(r.prompt_tokens), r.prefill_seconds,
                 r.prefill_seconds > 0 ? static_cast<double>(r.prompt_tokens) / r.prefill_seconds : 0.0,
                 r.tokens.size(), r.decode_tokens_per_second(),
                 r.stopped_at_eos ? " (eos)" : r.stopped_at_context ? " (context full)" : "");
  }
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate a continuation of a prompt");
  cmd->add_option("-m,--model", args->model_dir, "Checkpoint folder (config.json, *.safetensors)")->required();
  cmd->add_option("--prompt-ids", args->prompt_ids, "Prompt as token ids: 1,2,3");
  cmd->add_option("-n,--n-predict", args->n_new, "Tokens to generate")->capture_default_str();
  cmd->add_option("--temp", args->temperature, "Sampling temperature (0: greedy)")->capture_default_str();
  cmd->add_option("--top-k", args->top_k, "Keep the k most likely tokens (0: off)")->capture_default_str();
  cmd->add_option("--top-p", args->top_p, "Nucleus sampling mass (1: off)")->capture_default_str();
  cmd->add_option("--seed", args->seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--ctx", args->ctx, "Context length: 4096, 128K, 1M (default: prompt + n)");
  cmd->add_flag("--ignore-eos", args->ignore_eos, "Do not stop at the end-of-sequence ids");
  cmd->add_flag("--json", args->json, "Print one JSON object with tokens and timings");
  cmd->add_option("-t,--threads", args->threads, "CPU threads (0: all cores)")->capture_default_str();
  cmd->add_option("--chunk", args->chunk, "Prefill chunk in tokens")->capture_default_str();
  cmd->callback([args] { run_generate(*args); });
}

}  // namespace headinfer::cli
