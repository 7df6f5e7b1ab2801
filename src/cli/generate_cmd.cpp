// `headinfer generate`: load a checkpoint folder, run a prompt, print the continuation.
#include <algorithm>
#include <bit>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/error.h"
#include "headinfer/options.h"
#include "headinfer/tokenizer.h"
#include "placement_flags.h"
#include "progress.h"

namespace headinfer::cli {
namespace {

struct GenerateArgs {
  std::string model_dir;
  std::string prompt_ids;
  std::string prompt_text;  // -p
  std::string prompt_file;  // -f
  bool chat = false;
  std::string system;
  int64_t n_new = 32;
  float temperature = 0.0f;
  int64_t top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  std::string ctx;  // "" = prompt + n
  bool ignore_eos = false;
  bool json = false;
  int64_t chunk = 0;  // 0: the planner chooses
  PlacementFlags placement;
  int gpus = 1;                // devices the kv heads are split over (issue 16; CPU: simulated)
  std::string dump_logits;     // "" = off
  std::string kv_load;         // "" = off: start from this KV snapshot (the prompt continues it)
  std::string kv_save;         // "" = off: snapshot the KV after generating
};

// --dump-logits FILE: every logits vector the sampler sees, raw little-endian float32, one [vocab]
// row per generated token (row i chose token i: the prompt's last position, then each decode
// step). Rows are written as they come, so long runs hold no [tokens, vocab] copy; a run that
// fails removes the file, so it never leaves a partial one.
class LogitsDump {
 public:
  static_assert(std::endian::native == std::endian::little, "--dump-logits writes the host's float32 bytes");

  explicit LogitsDump(std::string path) : path_(std::move(path)), out_(path_, std::ios::binary | std::ios::trunc) {
    if (!out_) throw Error("--dump-logits " + path_ + ": cannot open for writing (check that the folder exists)");
  }
  LogitsDump(const LogitsDump&) = delete;
  LogitsDump& operator=(const LogitsDump&) = delete;
  ~LogitsDump() {
    if (finished_) return;
    out_.close();
    std::error_code ignored;
    std::filesystem::remove(path_, ignored);
  }

  void write_row(std::span<const float> logits) {
    out_.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size_bytes()));
    if (!out_) throw Error("--dump-logits " + path_ + ": write failed (disk full?)");
  }
  void finish() {
    out_.close();
    if (!out_) throw Error("--dump-logits " + path_ + ": write failed on close (disk full?)");
    finished_ = true;
  }

 private:
  std::string path_;
  std::ofstream out_;
  bool finished_ = false;
};

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open prompt file");
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void run_generate(const GenerateArgs& a) {
  const int n_prompt_sources = !a.prompt_ids.empty() + !a.prompt_text.empty() + !a.prompt_file.empty();
  if (n_prompt_sources != 1) throw Error("give exactly one prompt: -p TEXT, -f FILE or --prompt-ids 1,2,3");
  if (a.n_new < 0) throw Error("-n must be >= 0");
  if (a.chat && a.prompt_ids.size() > 0) throw Error("--chat needs a text prompt (-p or -f)");
  if (a.gpus < 1) throw Error("--gpus must be at least 1");
  if (a.gpus > 1 && (a.placement.device == "cuda" ||
                     resolve_device_kind({a.placement.device, a.placement.threads, 0}) != "cpu"))
    throw Error("--gpus " + std::to_string(a.gpus) +
                ": multi-GPU execution is not built yet (issue 16); `headinfer plan --gpus N` plans it and "
                "--device cpu runs the split on N simulated devices");
  // Opened before the model loads, so a bad path fails at once; removed again if anything fails.
  std::optional<LogitsDump> dump;
  if (!a.dump_logits.empty()) dump.emplace(a.dump_logits);

  auto checkpoint = Checkpoint::open(a.model_dir);
  const ModelConfig& config = checkpoint->config();
  // The tokenizer is needed for text prompts and to print text; --prompt-ids works without one.
  std::optional<Tokenizer> tokenizer;
  const bool have_tokenizer_file = std::filesystem::exists(std::filesystem::path(a.model_dir) / "tokenizer.json");
  if (a.prompt_ids.empty() || have_tokenizer_file) tokenizer = Tokenizer::from_model_dir(a.model_dir);
  std::vector<int32_t> prompt;
  if (!a.prompt_ids.empty()) {
    // "@FILE": the ids from a file (a 128K-token prompt is past the kernel's 128 KiB argument limit).
    const bool from_file = a.prompt_ids[0] == '@';
    std::string ids = from_file ? read_text_file(a.prompt_ids.substr(1)) : a.prompt_ids;
    while (from_file && !ids.empty() && std::isspace(static_cast<unsigned char>(ids.back()))) ids.pop_back();
    prompt = parse_id_list(ids, "--prompt-ids");
  } else {
    const std::string text = a.prompt_text.empty() ? read_text_file(a.prompt_file) : a.prompt_text;
    prompt = a.chat ? encode_chat(*tokenizer, ChatPrompt{a.system.empty() ? std::nullopt : std::optional(a.system), text})
                    : tokenizer->encode(text, true);
  }
  if (prompt.empty()) throw Error("the prompt is empty after tokenization");
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

  // --gpus N on the CPU: N simulated devices in this process, sharing the threads.
  std::vector<std::unique_ptr<Device>> devices;
  PlacementFlags per_device = a.placement;
  if (a.gpus > 1) {
    const int threads = a.placement.threads > 0 ? a.placement.threads : static_cast<int>(std::thread::hardware_concurrency());
    per_device.threads = std::max(1, threads / a.gpus);
  }
  for (int r = 0; r < a.gpus; ++r) devices.push_back(make_placement_device(per_device));
  std::vector<Device*> device_ptrs;
  for (const auto& d : devices) device_ptrs.push_back(d.get());
  Device* device = device_ptrs[0];
  EngineOptions eo;
  eo.kv = placement_options(a.placement, *device);
  eo.context = context;
  eo.chunk = a.chunk;
  // The prompt's first chunk is planned while the weights copy (a loaded snapshot puts it elsewhere).
  eo.prompt_tokens = a.kv_load.empty() ? static_cast<int64_t>(prompt.size()) : 0;
  Engine engine(*checkpoint, device_ptrs, eo);

  GenerateOptions go;
  go.max_new_tokens = a.n_new;
  go.ignore_eos = a.ignore_eos;
  go.sampling = {a.temperature, a.top_k, a.top_p, a.seed};
  if (config.eos_token_ids.empty() && tokenizer)
    for (int32_t id : tokenizer->stop_ids()) go.eos_ids.push_back(id);
  GenerateCallbacks cb;
  ProgressReporter progress("prefill");
  cb.on_prefill_progress = [&](int64_t done, int64_t total) { progress.update(done, total); };
  std::optional<StreamDecoder> stream;
  if (tokenizer) {
    stream.emplace(*tokenizer);
    stream->prime(prompt);
  }
  if (!a.json) {
    cb.on_token = [&](int32_t id) {
      if (stream) std::fputs(stream->push(id).c_str(), stdout);
      else std::printf("%d ", id);
      std::fflush(stdout);
    };
  }
  if (dump) cb.on_logits = [&](std::span<const float> logits) { dump->write_row(logits); };
  if (!a.kv_load.empty()) {
    engine.load_kv(a.kv_load);
    go.reuse_prefix = true;  // the prompt is the whole conversation; only what the snapshot lacks is prefilled
  }
  const GenerateResult r = generate(engine, prompt, go, cb);
  if (!a.kv_save.empty()) engine.save_kv(a.kv_save);
  if (dump) dump->finish();
  if (stream && !a.json) std::fputs(stream->flush().c_str(), stdout);

  if (a.json) {
    nlohmann::json out = {{"prompt_tokens", r.prompt_tokens},
                          {"reused_tokens", r.reused_tokens},
                          {"tokens", r.tokens},
                          {"prefill_seconds", r.prefill_seconds},
                          {"decode_seconds", r.decode_seconds},
                          {"decode_tokens_per_second", r.decode_tokens_per_second()},
                          {"stopped_at_eos", r.stopped_at_eos},
                          {"stopped_at_context", r.stopped_at_context},
                          {"context", context},
                          {"device", device->name()},
                          {"n_devices", a.gpus},
                          {"device_peak_bytes", device->peak_bytes()}};
    if (tokenizer) out["text"] = tokenizer->decode(r.tokens, true);
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("\n");
    std::fflush(stdout);  // the text ends before the speed line on stderr, also through a pipe
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
  cmd->add_option("-p,--prompt", args->prompt_text, "Prompt text (tokenized with the model's tokenizer.json)");
  cmd->add_option("-f,--file", args->prompt_file, "Read the prompt text from a file");
  cmd->add_option("--prompt-ids", args->prompt_ids, "Prompt as token ids: 1,2,3 (or @FILE holding them)");
  cmd->add_flag("--chat", args->chat, "Wrap the prompt as a user turn in the model's chat format");
  cmd->add_option("--system", args->system, "System message for --chat");
  cmd->add_option("-n,--n-predict", args->n_new, "Tokens to generate")->capture_default_str();
  cmd->add_option("--temp", args->temperature, "Sampling temperature (0: greedy)")->capture_default_str();
  cmd->add_option("--top-k", args->top_k, "Keep the k most likely tokens (0: off)")->capture_default_str();
  cmd->add_option("--top-p", args->top_p, "Nucleus sampling mass (1: off)")->capture_default_str();
  cmd->add_option("--seed", args->seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--ctx", args->ctx, "Context length: 4096, 128K, 1M (default: prompt + n)");
  cmd->add_flag("--ignore-eos", args->ignore_eos, "Do not stop at the end-of-sequence ids");
  cmd->add_flag("--json", args->json, "Print one JSON object with tokens and timings");
  cmd->add_option("--chunk", args->chunk, "Prefill chunk in tokens (default: the planner chooses for --gpu-mem and the context)");
  add_placement_flags(*cmd, args->placement);
  cmd->add_option("--gpus", args->gpus,
                  "Split the kv heads over N devices (must divide them); --device cpu only for now: N simulated "
                  "devices sharing the threads")
      ->capture_default_str();
  cmd->add_option("--dump-logits", args->dump_logits,
                  "Write the logits each token was chosen from: raw float32 [tokens, vocab], little-endian");
  cmd->add_option("--kv-load", args->kv_load,
                  "Start from a KV snapshot; the prompt is the whole conversation, only what it lacks is prefilled");
  cmd->add_option("--kv-save", args->kv_save, "Save the KV (every tier, the ids) to this file after generating");
  cmd->callback([args] { run_generate(*args); });
}

}  // namespace headinfer::cli
