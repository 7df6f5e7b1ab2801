#pragma once
// `headinfer serve`: an OpenAI-compatible HTTP server over one Engine (cpp-httplib).
//
// One generation at a time: requests take a place in a bounded FIFO queue (beyond it, 429) and
// run in turn on the one engine. The engine keeps the last conversation's KV, so a request whose
// ids begin with the held ones prefills only the rest (Engine::keep_common_prefix); its usage
// says how many prompt tokens were reused (usage.prompt_tokens_details.cached_tokens).
//
// Streams are server-sent events as OpenAI sends them (`data: {...}` blocks ending with
// `data: [DONE]`). While a request waits in the queue or its prompt is prefilled, the stream
// carries SSE comment lines, which clients ignore:
//     : queued              (about every 0.5 s while waiting)
//     : prefill DONE/TOTAL  (after each prefill chunk)
// A non-streamed response is sent chunked, with a space per queue tick or prefill chunk before
// the JSON (leading whitespace is valid JSON). Both are how a client that has gone away is seen:
// the next write fails, and the request is cancelled (between prefill chunks or tokens).
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "headinfer/engine.h"
#include "headinfer/tokenizer.h"

namespace headinfer::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                     // 0: a free port (on_ready gets it)
  int64_t queue = 8;                   // requests that may wait behind the running one; more get 429
  size_t max_body_bytes = 64u << 20;   // larger bodies get 413
  std::string model_name;              // the id /v1/models lists and requests must name
  std::filesystem::path kv_dir = ".";  // where /v1/kv/save and /v1/kv/load keep NAME.hikv
  std::vector<int64_t> eos_ids;        // stop ids; empty: the checkpoint config's
};

class Server {
 public:
  Server(Engine& engine, const Tokenizer& tokenizer, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  // Binds, calls on_ready(port) and serves until stop(). Throws Error when it cannot bind.
  void run(const std::function<void(int)>& on_ready);
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace headinfer::server
