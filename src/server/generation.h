#pragma once
// One completion on the engine: the prompt ids of a request (checked against the context before
// anything runs), and the run itself with its text streamed through callbacks, `stop` strings cut,
// and cancellation between prefill chunks and tokens.
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "api.h"
#include "headinfer/engine.h"
#include "headinfer/tokenizer.h"

namespace headinfer::server {

// Counters for /metrics (Prometheus text). Updated under its own lock by request threads.
struct Metrics {
  mutable std::mutex mutex;
  int64_t requests_ok = 0, requests_rejected = 0, requests_error = 0, requests_cancelled = 0;
  int64_t prompt_tokens = 0, prompt_tokens_reused = 0, generated_tokens = 0;
  double prefill_seconds = 0.0, decode_seconds = 0.0;
  // The engine's KV as of the last request (read in the engine's turn, not while it runs).
  int64_t kv_bytes_device = 0, kv_bytes_host = 0, kv_positions = 0;
};

struct Prepared {
  std::vector<int32_t> ids;  // the whole prompt (the engine keeps what it can of it)
  GenerateOptions options;
  std::vector<std::string> stop;
};

// Tokenizes and checks a request against the engine's context: ApiError (400) when the prompt is
// empty, has ids outside the vocabulary, or the prompt plus max_tokens passes the context.
Prepared prepare(const CompletionRequest& r, const Tokenizer& tokenizer, const ModelConfig& config, int64_t context,
                 const std::vector<int64_t>& eos_ids);

struct Outcome {
  std::string text;
  std::string finish_reason;  // "stop" (eos or a stop string) or "length"
  int64_t prompt_tokens = 0, reused_tokens = 0, completion_tokens = 0;
  double prefill_seconds = 0.0, decode_seconds = 0.0;
  bool cancelled = false;     // the client went away: nothing more is sent
};

struct Emitter {
  std::function<bool(const std::string&)> text;      // a piece of text; false: the client is gone
  std::function<bool(int64_t, int64_t)> progress;    // prefill (done, total); false: the client is gone
};

// Runs on the engine (the caller holds the turn). Errors other than cancellation propagate.
Outcome run_completion(Engine& engine, const Tokenizer& tokenizer, const Prepared& p, const Emitter& emit);

// Holds back text that may be the start of a stop string; cuts at the first stop string.
class StopCutter {
 public:
  explicit StopCutter(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  std::string push(const std::string& piece);  // text that is safe to send now
  std::string flush();                          // what was held back, at the end
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace headinfer::server
