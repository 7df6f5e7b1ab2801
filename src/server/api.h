#pragma once
// The OpenAI request and response shapes the server speaks: parsing and checking a request body
// (every bad field is an ApiError with the status and error object OpenAI would send), and the
// JSON of responses, stream chunks and errors.
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace headinfer::server {

// A request the server refuses: the HTTP status and OpenAI's error object
// {"error": {"message", "type", "param", "code"}}.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string type = "invalid_request_error",
           std::optional<std::string> param = std::nullopt, std::optional<std::string> code = std::nullopt)
      : std::runtime_error(message), status(status), type(std::move(type)), param(std::move(param)),
        code(std::move(code)) {}
  int status;
  std::string type;
  std::optional<std::string> param;
  std::optional<std::string> code;
};

nlohmann::json error_body(const std::string& message, const std::string& type, const std::optional<std::string>& param,
                          const std::optional<std::string>& code);
nlohmann::json error_body(const ApiError& e);

struct ChatMessage {
  std::string role;  // system | user | assistant
  std::string content;
};

// POST /v1/completions and /v1/chat/completions, checked but not yet tokenized.
struct CompletionRequest {
  bool chat = false;
  std::string model;
  std::optional<std::string> prompt_text;       // completions: "prompt": "text"
  std::vector<int32_t> prompt_ids;              // completions: "prompt": [ids]
  std::vector<ChatMessage> messages;            // chat
  std::optional<int64_t> max_tokens;            // unset: completions 16, chat the rest of the context
  float temperature = 1.0f;
  float top_p = 1.0f;
  int64_t top_k = 0;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;                   // stream_options.include_usage
};

// Throws ApiError (400) for a body that is not JSON, a wrong field type or value, an unknown
// field value; 404 for a model other than `served_model`.
CompletionRequest parse_completion_request(const std::string& body, bool chat, const std::string& served_model);

// POST /v1/kv/save and /v1/kv/load: {"name": "..."}, letters, digits, '.', '_', '-' (no leading
// '.'), at most 100 characters. Throws ApiError (400).
std::string parse_snapshot_name(const std::string& body);

}  // namespace headinfer::server
