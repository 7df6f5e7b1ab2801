// `headinfer serve`: the OpenAI-compatible server (src/server/) on one model.
#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "commands.h"
#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/error.h"
#include "headinfer/options.h"
#include "headinfer/tokenizer.h"
#include "placement_flags.h"
#include "server.h"

namespace headinfer::cli {
namespace {

struct ServeArgs {
  std::string model_dir;
  std::string host = "127.0.0.1";
  int port = 8080;
  int64_t queue = 8;
  std::string max_body = "64MiB";
  std::string model_name;  // "" = the folder's name
  std::string kv_dir = ".";
  std::string kv_load;     // a snapshot to start from
  std::string ctx;         // "" = the config's max_position_embeddings
  int64_t chunk = 0;       // 0 = the planner chooses
  PlacementFlags placement;
};

void run_serve(const ServeArgs& a) {
  if (a.port < 0 || a.port > 65535) throw Error("--port must be 0..65535");
  if (a.queue < 0) throw Error("--queue must be >= 0");
  if (a.chunk < 0) throw Error("--chunk must be >= 1");
  if (!std::filesystem::is_directory(a.kv_dir)) throw Error("--kv-dir " + a.kv_dir + ": not a folder");
  // SIGINT / SIGTERM stop the server and return normally (so the process ends cleanly): blocked
  // here, before any thread starts, so every thread inherits the mask, and taken by one waiting
  // thread below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGUSR1);  // sent to end the waiter when the server stops first
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  auto checkpoint = Checkpoint::open(a.model_dir);
  const ModelConfig& config = checkpoint->config();
  const Tokenizer tokenizer = Tokenizer::from_model_dir(a.model_dir);
  const int64_t context = a.ctx.empty() ? config.max_position_embeddings : parse_count(a.ctx, "--ctx");
  if (context < 1) throw Error("--ctx: the config has no max_position_embeddings; give --ctx");

  auto device = make_placement_device(a.placement);
  EngineOptions eo;
  eo.kv = placement_options(a.placement, *device);
  eo.context = context;
  if (a.chunk > 0) eo.chunk = a.chunk;
  Engine engine(*checkpoint, *device, eo);
  if (!a.kv_load.empty()) {
    const Engine::SnapshotStats s = engine.load_kv(a.kv_load);
    std::fprintf(stderr, "loaded %lld positions from %s (%.1f MB/s)\n", static_cast<long long>(s.positions),
                 a.kv_load.c_str(), s.seconds > 0 ? static_cast<double>(s.bytes) / 1e6 / s.seconds : 0.0);
  }

  server::ServerOptions so;
  so.host = a.host;
  so.port = a.port;
  so.queue = a.queue;
  so.max_body_bytes = static_cast<size_t>(parse_byte_size(a.max_body, "--max-body"));
  so.model_name = a.model_name.empty() ? std::filesystem::absolute(a.model_dir).lexically_normal().filename().string()
                                       : a.model_name;
  if (so.model_name.empty()) so.model_name = std::filesystem::absolute(a.model_dir).parent_path().filename().string();
  so.kv_dir = a.kv_dir;
  if (config.eos_token_ids.empty())
    for (int32_t id : tokenizer.stop_ids()) so.eos_ids.push_back(id);
  server::Server srv(engine, tokenizer, so);
  std::signal(SIGPIPE, SIG_IGN);  // a client gone mid-write is a failed write, not the end of the server
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    srv.stop();
  });
  struct JoinWaiter {
    std::thread& t;
    ~JoinWaiter() {
      pthread_kill(t.native_handle(), SIGUSR1);
      t.join();
    }
  } join_waiter{waiter};
  srv.run([&](int port) {
    // One line a script can wait for.
    std::printf("headinfer serve: listening on http://%s:%d (model '%s', context %lld, device %s)\n", a.host.c_str(),
                port, so.model_name.c_str(), static_cast<long long>(context), device->name().c_str());
    std::fflush(stdout);
  });
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto args = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server with KV reuse across turns");
  cmd->add_option("-m,--model", args->model_dir, "Checkpoint folder (config.json, *.safetensors, tokenizer.json)")
      ->required();
  cmd->add_option("--host", args->host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", args->port, "Port (0: a free one, printed)")->capture_default_str();
  cmd->add_option("--queue", args->queue, "Requests that may wait behind the running one (beyond: 429)")
      ->capture_default_str();
  cmd->add_option("--max-body", args->max_body, "Largest request body (beyond: 413)")->capture_default_str();
  cmd->add_option("--model-name", args->model_name, "Model id for the API (default: the folder's name)");
  cmd->add_option("--kv-dir", args->kv_dir, "Folder for /v1/kv/save and /v1/kv/load snapshots")->capture_default_str();
  cmd->add_option("--kv-load", args->kv_load, "Start from this KV snapshot");
  cmd->add_option("--ctx", args->ctx, "Context length: 4096, 128K, 1M (default: the config's maximum)");
  cmd->add_option("--chunk", args->chunk, "Prefill chunk in tokens (0: the planner chooses)")->capture_default_str();
  add_placement_flags(*cmd, args->placement);
  cmd->callback([args] { run_serve(*args); });
}

}  // namespace headinfer::cli
