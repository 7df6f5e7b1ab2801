#include "generation.h"

#include <algorithm>
#include <chrono>
#include <random>

namespace headinfer::server {
namespace {

double seconds(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

ApiError context_error(const std::string& message) {
  return ApiError(400, message, "invalid_request_error", "messages", "context_length_exceeded");
}

}  // namespace

std::string StopCutter::push(const std::string& piece) {
  if (stopped_) return {};
  held_ += piece;
  size_t cut = std::string::npos;
  for (const std::string& s : stops_) cut = std::min(cut, held_.find(s));
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, cut);
    held_.clear();
    return out;
  }
  // Keep the longest tail of held_ that some stop string begins with.
  size_t keep = 0;
  for (const std::string& s : stops_)
    for (size_t k = std::min(s.size() - 1, held_.size()); k > keep; --k)
      if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopCutter::flush() {
  if (stopped_) return {};
  return std::exchange(held_, std::string());
}

Prepared prepare(const CompletionRequest& r, const Tokenizer& tokenizer, const ModelConfig& config, int64_t context,
                 const std::vector<int64_t>& eos_ids) {
  Prepared p;
  const std::string param = r.chat ? "messages" : "prompt";
  if (r.chat) {
    ChatPrompt chat;
    ChatHistory history;
    size_t i = 0;
    if (r.messages[0].role == "system") chat.system = r.messages[i++].content;
    auto expect_role = [&](size_t at, const char* role) {
      const std::string where = "messages[" + std::to_string(at) + "]";
      if (r.messages[at].role != role)
        throw ApiError(400, "'" + where + "' must be a " + role + " message (system first, then user and assistant "
                       "turns in order, ending with user)", "invalid_request_error", where + ".role");
    };
    if ((r.messages.size() - i) % 2 == 0)
      throw ApiError(400, "the messages must end with a user message after alternating user and assistant turns",
                     "invalid_request_error", "messages");
    for (; i + 1 < r.messages.size(); i += 2) {
      expect_role(i, "user");
      expect_role(i + 1, "assistant");
      history.emplace_back(r.messages[i].content, r.messages[i + 1].content);
    }
    expect_role(i, "user");
    chat.user = r.messages[i].content;
    try {
      p.ids = encode_chat(tokenizer, chat, history);
    } catch (const Error& e) {
      throw ApiError(400, std::string("this model has no chat format: ") + e.what(), "invalid_request_error",
                     "messages");
    }
  } else if (r.prompt_text) {
    p.ids = tokenizer.encode(*r.prompt_text, true);
  } else {
    p.ids = r.prompt_ids;
  }
  if (p.ids.empty()) throw ApiError(400, "the prompt is empty after tokenization", "invalid_request_error", param);
  for (int32_t id : p.ids)
    if (id < 0 || id >= config.vocab_size)
      throw ApiError(400, "token id " + std::to_string(id) + " is outside the vocabulary (" +
                     std::to_string(config.vocab_size) + " tokens)", "invalid_request_error", param);
  const auto n = static_cast<int64_t>(p.ids.size());
  if (n > context)
    throw context_error("this model's maximum context length is " + std::to_string(context) +
                        " tokens, however the prompt has " + std::to_string(n) + " tokens");
  const int64_t room = context - n;
  const int64_t max_tokens = r.max_tokens.value_or(r.chat ? room : std::min<int64_t>(16, room));
  if (max_tokens > room)
    throw ApiError(400, "this model's maximum context length is " + std::to_string(context) + " tokens, however " +
                   std::to_string(n) + " prompt tokens and max_tokens " + std::to_string(max_tokens) +
                   " were requested", "invalid_request_error", "max_tokens", "context_length_exceeded");
  p.options.max_new_tokens = max_tokens;
  p.options.reuse_prefix = true;
  p.options.eos_ids = eos_ids;
  p.options.sampling.temperature = r.temperature;
  p.options.sampling.top_k = r.top_k;
  p.options.sampling.top_p = r.top_p;
  p.options.sampling.seed = r.seed ? *r.seed : std::random_device()();
  p.stop = r.stop;
  return p;
}

Outcome run_completion(Engine& engine, const Tokenizer& tokenizer, const Prepared& p, const Emitter& emit) {
  Outcome out;
  out.prompt_tokens = static_cast<int64_t>(p.ids.size());
  // The kept prefix, known before the run (generate keeps the same one again).
  out.reused_tokens = engine.keep_common_prefix(p.ids);
  StreamDecoder decoder(tokenizer);
  decoder.prime(p.ids);
  StopCutter cutter(p.stop);
  const std::vector<int64_t>& eos = p.options.eos_ids.empty() ? engine.config().eos_token_ids : p.options.eos_ids;
  bool gone = false;
  const auto t0 = std::chrono::steady_clock::now();
  auto t_first = t0;
  auto send = [&](const std::string& text) {
    if (text.empty() || gone) return;
    out.text += text;
    if (!emit.text(text)) gone = true;
  };
  GenerateCallbacks cb;
  cb.on_prefill_progress = [&](int64_t done, int64_t total) {
    if (!gone && !emit.progress(done, total)) gone = true;
  };
  cb.on_token = [&](int32_t id) {
    if (out.completion_tokens++ == 0) t_first = std::chrono::steady_clock::now();
    if (std::find(eos.begin(), eos.end(), id) != eos.end()) return;
    send(cutter.push(decoder.push(id)));
  };
  cb.cancelled = [&] { return gone || cutter.stopped(); };
  try {
    const GenerateResult r = generate(engine, p.ids, p.options, cb);
    out.finish_reason = r.stopped_at_eos ? "stop" : "length";
    send(cutter.push(decoder.flush()));
    send(cutter.flush());
  } catch (const Cancelled&) {
    out.cancelled = gone;
    out.finish_reason = "stop";  // a stop string (when not cancelled)
  }
  const auto t_end = std::chrono::steady_clock::now();
  out.prefill_seconds = seconds((out.completion_tokens > 0 ? t_first : t_end) - t0);
  out.decode_seconds = out.completion_tokens > 0 ? seconds(t_end - t_first) : 0.0;
  return out;
}

}  // namespace headinfer::server
