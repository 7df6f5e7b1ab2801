#include "server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "api.h"
#include "generation.h"
#include "headinfer/error.h"
#include "scheduler.h"

namespace headinfer::server {
namespace {

using nlohmann::json;

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) { send_json(res, e.status, error_body(e)); }

int64_t unix_time() { return static_cast<int64_t>(std::time(nullptr)); }

}  // namespace

struct Server::Impl {
  Engine& engine;
  const Tokenizer& tokenizer;
  ServerOptions options;
  Scheduler scheduler;
  Metrics metrics;
  httplib::Server http;
  std::atomic<uint64_t> next_id{1};

  Impl(Engine& e, const Tokenizer& t, ServerOptions o)
      : engine(e), tokenizer(t), options(std::move(o)), scheduler(options.queue) {
    record_kv();
    routes();
  }

  void count(int64_t Metrics::*field) {
    std::lock_guard<std::mutex> lock(metrics.mutex);
    ++(metrics.*field);
  }

  void routes() {
    // Enough threads that every admitted or rejected request gets one at once, with spares for
    // /health, /metrics and idle keep-alive connections.
    const auto threads = static_cast<size_t>(options.queue + 32);
    http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    http.set_payload_max_length(options.max_body_bytes);
    http.set_keep_alive_timeout(2);
    http.set_error_handler([](const httplib::Request&, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 413)
        send_json(res, 413, error_body("the request body is too large", "invalid_request_error", std::nullopt, std::nullopt));
      else if (res.status == 404)
        send_json(res, 404, error_body("no such endpoint", "invalid_request_error", std::nullopt, "unknown_url"));
      else
        send_json(res, res.status, error_body("request failed (HTTP " + std::to_string(res.status) + ")",
                                              "invalid_request_error", std::nullopt, std::nullopt));
    });
    http.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      count(&Metrics::requests_error);
      std::string what = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      send_json(res, 500, error_body(what, "server_error", std::nullopt, std::nullopt));
    });
    http.Get("/health", [](const httplib::Request&, httplib::Response& res) { send_json(res, 200, {{"status", "ok"}}); });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200,
                {{"object", "list"},
                 {"data", json::array({{{"id", options.model_name}, {"object", "model"}, {"created", unix_time()},
                                        {"owned_by", "headinfer"}, {"context_length", engine.context()}}})}});
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics_text(), "text/plain; version=0.0.4");
    });
    http.Post("/v1/completions",
              [this](const httplib::Request& req, httplib::Response& res) { completion(req, res, false); });
    http.Post("/v1/chat/completions",
              [this](const httplib::Request& req, httplib::Response& res) { completion(req, res, true); });
    http.Post("/v1/kv/save", [this](const httplib::Request& req, httplib::Response& res) { snapshot(req, res, true); });
    http.Post("/v1/kv/load", [this](const httplib::Request& req, httplib::Response& res) { snapshot(req, res, false); });
  }

  std::string metrics_text() {
    std::lock_guard<std::mutex> lock(metrics.mutex);
    const Metrics& m = metrics;
    std::string out;
    auto metric = [&](const char* name, const char* type, const char* help, const std::string& samples) {
      out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + samples;
    };
    auto one = [](const char* name, double v, const std::string& labels = "") {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.17g", v);
      return std::string(name) + labels + " " + buf + "\n";
    };
    metric("headinfer_prompt_tokens_total", "counter", "Prompt tokens of finished requests.",
           one("headinfer_prompt_tokens_total", static_cast<double>(m.prompt_tokens)));
    metric("headinfer_prompt_tokens_reused_total", "counter", "Prompt tokens taken from the kept KV, not prefilled.",
           one("headinfer_prompt_tokens_reused_total", static_cast<double>(m.prompt_tokens_reused)));
    metric("headinfer_prefilled_tokens_total", "counter", "Prompt tokens prefilled.",
           one("headinfer_prefilled_tokens_total", static_cast<double>(m.prompt_tokens - m.prompt_tokens_reused)));
    metric("headinfer_generated_tokens_total", "counter", "Tokens generated.",
           one("headinfer_generated_tokens_total", static_cast<double>(m.generated_tokens)));
    metric("headinfer_prefill_seconds_total", "counter", "Seconds spent prefilling (to the first token).",
           one("headinfer_prefill_seconds_total", m.prefill_seconds));
    metric("headinfer_decode_seconds_total", "counter", "Seconds spent decoding after the first token.",
           one("headinfer_decode_seconds_total", m.decode_seconds));
    metric("headinfer_requests_total", "counter", "Requests by outcome.",
           one("headinfer_requests_total", static_cast<double>(m.requests_ok), "{outcome=\"ok\"}") +
               one("headinfer_requests_total", static_cast<double>(m.requests_rejected), "{outcome=\"rejected\"}") +
               one("headinfer_requests_total", static_cast<double>(m.requests_error), "{outcome=\"error\"}") +
               one("headinfer_requests_total", static_cast<double>(m.requests_cancelled), "{outcome=\"cancelled\"}"));
    metric("headinfer_queue_length", "gauge", "Requests waiting for the engine.",
           one("headinfer_queue_length", static_cast<double>(scheduler.waiting())));
    metric("headinfer_kv_bytes", "gauge", "KV cache bytes allocated per tier (as of the last request).",
           one("headinfer_kv_bytes", static_cast<double>(m.kv_bytes_device), "{tier=\"device\"}") +
               one("headinfer_kv_bytes", static_cast<double>(m.kv_bytes_host), "{tier=\"host\"}"));
    metric("headinfer_kv_positions", "gauge", "Positions the kept conversation holds (as of the last request).",
           one("headinfer_kv_positions", static_cast<double>(m.kv_positions)));
    metric("headinfer_context_tokens", "gauge", "Positions the KV cache can hold.",
           one("headinfer_context_tokens", static_cast<double>(engine.context())));
    return out;
  }

  json usage(const Outcome& o) const {
    return {{"prompt_tokens", o.prompt_tokens},
            {"completion_tokens", o.completion_tokens},
            {"total_tokens", o.prompt_tokens + o.completion_tokens},
            {"prompt_tokens_details", {{"cached_tokens", o.reused_tokens}}}};
  }

  json chunk(const std::string& id, bool chat, const json& delta_or_text, const json& finish) const {
    json choice = {{"index", 0}, {"finish_reason", finish}, {"logprobs", nullptr}};
    if (chat) choice["delta"] = delta_or_text;
    else choice["text"] = delta_or_text;
    return {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", unix_time()},
            {"model", options.model_name}, {"choices", json::array({choice})}};
  }

  // In the engine's turn.
  void record_kv() {
    std::lock_guard<std::mutex> lock(metrics.mutex);
    metrics.kv_bytes_device = static_cast<int64_t>(engine.kv_cache().bytes_device());
    metrics.kv_bytes_host = static_cast<int64_t>(engine.kv_cache().bytes_host());
    metrics.kv_positions = engine.n_past();
  }

  void record(const Outcome& o) {
    record_kv();
    std::lock_guard<std::mutex> lock(metrics.mutex);
    ++(o.cancelled ? metrics.requests_cancelled : metrics.requests_ok);
    metrics.prompt_tokens += o.prompt_tokens;
    metrics.prompt_tokens_reused += o.reused_tokens;
    metrics.generated_tokens += o.completion_tokens;
    metrics.prefill_seconds += o.prefill_seconds;
    metrics.decode_seconds += o.decode_seconds;
  }

  void completion(const httplib::Request& req, httplib::Response& res, bool chat) {
    std::shared_ptr<Prepared> prepared;
    CompletionRequest r;
    try {
      r = parse_completion_request(req.body, chat, options.model_name);
      prepared = std::make_shared<Prepared>(
          prepare(r, tokenizer, engine.config(), engine.context(), options.eos_ids));
    } catch (const ApiError& e) {
      count(&Metrics::requests_error);
      return send_error(res, e);
    }
    const uint64_t ticket = scheduler.admit();
    if (ticket == 0) {
      count(&Metrics::requests_rejected);
      return send_error(res, ApiError(429, "the server is busy: " + std::to_string(options.queue) +
                                               " requests are already waiting; retry later",
                                      "rate_limit_error", std::nullopt, "queue_full"));
    }
    const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id++);
    const bool stream = r.stream, include_usage = r.include_usage;
    // The work runs in the content provider (after the status line is sent), so a client that
    // goes away is noticed by a failed write and cancels its request.
    auto provider = [this, prepared, ticket, id, chat, stream, include_usage, started = false](
                        size_t, httplib::DataSink& sink) mutable -> bool {
      if (started) return false;
      started = true;
      auto write = [&sink](const std::string& s) { return sink.write(s.data(), s.size()); };
      auto event = [&](const json& j) { return write("data: " + j.dump() + "\n\n"); };
      if (!scheduler.wait_turn(ticket, [&] { return write(stream ? ": queued\n\n" : " "); })) {
        count(&Metrics::requests_cancelled);
        return false;
      }
      Turn turn(scheduler);
      if (stream && chat && !event(chunk(id, true, {{"role", "assistant"}, {"content", ""}}, nullptr))) {
        count(&Metrics::requests_cancelled);
        return false;
      }
      Emitter emit;
      emit.progress = [&](int64_t done, int64_t total) {
        return write(stream ? ": prefill " + std::to_string(done) + "/" + std::to_string(total) + "\n\n" : " ");
      };
      emit.text = [&](const std::string& text) {
        if (!stream) return true;
        return event(chunk(id, chat, chat ? json{{"content", text}} : json(text), nullptr));
      };
      Outcome o;
      try {
        o = run_completion(engine, tokenizer, *prepared, emit);
      } catch (const std::exception& e) {
        record_kv();
        count(&Metrics::requests_error);
        const json err = error_body(std::string("generation failed: ") + e.what(), "server_error", std::nullopt,
                                    std::nullopt);
        if (stream) event(err);
        else write(err.dump());
        sink.done();
        return true;
      }
      record(o);
      if (o.cancelled) return false;
      bool ok = true;
      if (stream) {
        ok = event(chunk(id, chat, chat ? json::object() : json(""), o.finish_reason));
        if (ok && include_usage) {
          json last = chunk(id, chat, json::object(), nullptr);
          last["choices"] = json::array();
          last["usage"] = usage(o);
          ok = event(last);
        }
        ok = ok && write("data: [DONE]\n\n");
      } else {
        json choice = {{"index", 0}, {"finish_reason", o.finish_reason}, {"logprobs", nullptr}};
        if (chat) choice["message"] = {{"role", "assistant"}, {"content", o.text}};
        else choice["text"] = o.text;
        ok = write(json{{"id", id},
                        {"object", chat ? "chat.completion" : "text_completion"},
                        {"created", unix_time()},
                        {"model", options.model_name},
                        {"choices", json::array({choice})},
                        {"usage", usage(o)}}
                       .dump());
      }
      if (ok) sink.done();
      return ok;
    };
    res.status = 200;
    res.set_chunked_content_provider(stream ? "text/event-stream" : "application/json", std::move(provider));
    if (stream) res.set_header("Cache-Control", "no-cache");
  }

  void snapshot(const httplib::Request& req, httplib::Response& res, bool save) {
    std::filesystem::path file;
    try {
      file = options.kv_dir / (parse_snapshot_name(req.body) + ".hikv");
    } catch (const ApiError& e) {
      count(&Metrics::requests_error);
      return send_error(res, e);
    }
    if (!save && !std::filesystem::exists(file))
      return send_error(res, ApiError(404, "no KV snapshot " + file.filename().string() + " in " +
                                               options.kv_dir.string(), "invalid_request_error", "name", "not_found"));
    const uint64_t ticket = scheduler.admit();
    if (ticket == 0) {
      count(&Metrics::requests_rejected);
      return send_error(res, ApiError(429, "the server is busy; retry later", "rate_limit_error", std::nullopt,
                                      "queue_full"));
    }
    scheduler.wait_turn(ticket, [] { return true; });
    Turn turn(scheduler);
    try {
      const Engine::SnapshotStats s = save ? engine.save_kv(file) : engine.load_kv(file);
      record_kv();
      count(&Metrics::requests_ok);
      send_json(res, 200,
                {{"name", file.stem().string()}, {"file", file.string()}, {"positions", s.positions},
                 {"bytes", s.bytes}, {"seconds", s.seconds},
                 {"mb_per_s", s.seconds > 0 ? static_cast<double>(s.bytes) / 1e6 / s.seconds : 0.0}});
    } catch (const Error& e) {
      record_kv();
      count(&Metrics::requests_error);
      send_error(res, ApiError(save ? 500 : 400, e.what(), save ? "server_error" : "invalid_request_error", "name",
                               save ? std::nullopt : std::optional<std::string>("invalid_snapshot")));
    }
  }
};

Server::Server(Engine& engine, const Tokenizer& tokenizer, ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, tokenizer, std::move(options))) {}

Server::~Server() = default;

void Server::run(const std::function<void(int)>& on_ready) {
  int port = impl_->options.port;
  if (port == 0) {
    port = impl_->http.bind_to_any_port(impl_->options.host);
    if (port < 0) throw Error("serve: cannot bind to " + impl_->options.host + " on any port");
  } else if (!impl_->http.bind_to_port(impl_->options.host, port)) {
    throw Error("serve: cannot bind to " + impl_->options.host + ":" + std::to_string(port) +
                " (in use? try --port 0 for a free one)");
  }
  if (on_ready) on_ready(port);
  impl_->http.listen_after_bind();
}

void Server::stop() { impl_->http.stop(); }

}  // namespace headinfer::server
