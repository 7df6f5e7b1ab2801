#include "api.h"

#include <cmath>

namespace headinfer::server {
namespace {

using nlohmann::json;

ApiError bad(const std::string& message, const std::string& param) { return ApiError(400, message, "invalid_request_error", param); }

const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

double number(const json& body, const char* name, double lo, double hi, double fallback) {
  const json* v = field(body, name);
  if (v == nullptr) return fallback;
  if (!v->is_number()) throw bad(std::string("'") + name + "' must be a number", name);
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi))
    throw bad(std::string("'") + name + "' must be between " + json(lo).dump() + " and " + json(hi).dump(), name);
  return x;
}

std::optional<int64_t> integer(const json& body, const char* name, int64_t lo) {
  const json* v = field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number_integer()) throw bad(std::string("'") + name + "' must be an integer", name);
  const auto x = v->get<int64_t>();
  if (x < lo) throw bad(std::string("'") + name + "' must be at least " + std::to_string(lo), name);
  return x;
}

bool boolean(const json& body, const char* name) {
  const json* v = field(body, name);
  if (v == nullptr) return false;
  if (!v->is_boolean()) throw bad(std::string("'") + name + "' must be a boolean", name);
  return v->get<bool>();
}

std::string message_content(const json& m, size_t i) {
  const std::string param = "messages[" + std::to_string(i) + "].content";
  const json* c = field(m, "content");
  if (c == nullptr) throw bad("'" + param + "' is required", param);
  if (c->is_string()) return c->get<std::string>();
  if (!c->is_array()) throw bad("'" + param + "' must be a string or an array of text parts", param);
  std::string text;  // [{"type": "text", "text": ...}, ...]
  for (const json& part : *c) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
      throw bad("'" + param + "': only text parts are supported", param);
    text += part["text"].get<std::string>();
  }
  return text;
}

}  // namespace

nlohmann::json error_body(const std::string& message, const std::string& type, const std::optional<std::string>& param,
                          const std::optional<std::string>& code) {
  return {{"error",
           {{"message", message}, {"type", type}, {"param", param ? json(*param) : json(nullptr)},
            {"code", code ? json(*code) : json(nullptr)}}}};
}

nlohmann::json error_body(const ApiError& e) { return error_body(e.what(), e.type, e.param, e.code); }

CompletionRequest parse_completion_request(const std::string& text, bool chat, const std::string& served_model) {
  json body;
  try {
    body = json::parse(text);
  } catch (const json::exception&) {  // parse_error, and out_of_range for a number past double's (1E400)
    throw ApiError(400, "the request body is not valid JSON");
  }
  if (!body.is_object()) throw ApiError(400, "the request body must be a JSON object");
  CompletionRequest r;
  r.chat = chat;
  const json* model = field(body, "model");
  if (model == nullptr) throw bad("'model' is required", "model");
  if (!model->is_string()) throw bad("'model' must be a string", "model");
  r.model = model->get<std::string>();
  if (r.model != served_model)
    throw ApiError(404, "the model '" + r.model + "' does not exist (this server serves '" + served_model + "')",
                   "invalid_request_error", "model", "model_not_found");

  if (chat) {
    const json* messages = field(body, "messages");
    if (messages == nullptr) throw bad("'messages' is required", "messages");
    if (!messages->is_array() || messages->empty()) throw bad("'messages' must be a non-empty array", "messages");
    for (size_t i = 0; i < messages->size(); ++i) {
      const json& m = (*messages)[i];
      const std::string param = "messages[" + std::to_string(i) + "]";
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
        throw bad("'" + param + "' must be an object with a string 'role'", param + ".role");
      r.messages.push_back({m["role"].get<std::string>(), message_content(m, i)});
    }
  } else {
    const json* prompt = field(body, "prompt");
    if (prompt == nullptr) throw bad("'prompt' is required", "prompt");
    if (prompt->is_string()) {
      r.prompt_text = prompt->get<std::string>();
    } else if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
      r.prompt_text = (*prompt)[0].get<std::string>();
    } else if (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_number()) {
      for (const json& id : *prompt) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
          throw bad("'prompt' as token ids must be an array of non-negative integers", "prompt");
        r.prompt_ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
      }
    } else {
      throw bad("'prompt' must be a string or an array of token ids (one prompt per request)", "prompt");
    }
  }

  if (auto n = integer(body, "n", 1); n && *n != 1) throw bad("only 'n' = 1 is supported", "n");
  r.max_tokens = integer(body, chat && field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens", 0);
  r.temperature = static_cast<float>(number(body, "temperature", 0.0, 2.0, 1.0));
  r.top_p = static_cast<float>(number(body, "top_p", 0.0, 1.0, 1.0));
  if (r.top_p <= 0.0f) throw bad("'top_p' must be greater than 0", "top_p");
  r.top_k = integer(body, "top_k", 0).value_or(0);
  if (auto seed = integer(body, "seed", INT64_MIN)) r.seed = static_cast<uint64_t>(*seed);
  if (const json* stop = field(body, "stop")) {
    if (stop->is_string()) {
      r.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array() && stop->size() <= 4) {
      for (const json& s : *stop) {
        if (!s.is_string()) throw bad("'stop' must be a string or an array of up to 4 strings", "stop");
        r.stop.push_back(s.get<std::string>());
      }
    } else {
      throw bad("'stop' must be a string or an array of up to 4 strings", "stop");
    }
    for (const std::string& s : r.stop)
      if (s.empty()) throw bad("'stop' strings must not be empty", "stop");
  }
  r.stream = boolean(body, "stream");
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) throw bad("'stream_options' must be an object", "stream_options");
    r.include_usage = boolean(*so, "include_usage");
  }
  return r;
}

std::string parse_snapshot_name(const std::string& text) {
  json body;
  try {
    body = json::parse(text);
  } catch (const json::exception&) {  // parse_error, and out_of_range for a number past double's (1E400)
    throw ApiError(400, "the request body is not valid JSON");
  }
  if (!body.is_object() || !body.contains("name") || !body["name"].is_string())
    throw bad("'name' (a string) is required", "name");
  const std::string name = body["name"].get<std::string>();
  bool ok = !name.empty() && name.size() <= 100 && name[0] != '.';
  for (char c : name) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-');
  if (!ok) throw bad("'name' must be 1-100 letters, digits, '.', '_' or '-', not starting with '.'", "name");
  return name;
}

}  // namespace headinfer::server
