// One-turn chat prompts in the formats our models use, built from special-token ids and
// separately encoded text, so text can never smuggle in a role header.
#include "headinfer/error.h"
#include "headinfer/tokenizer.h"

namespace headinfer {
namespace {

int32_t require_token(const Tokenizer& tokenizer, const char* token, ChatFormat format) {
  if (auto id = tokenizer.token_to_id(token)) return *id;
  throw Error(std::string("chat format ") + to_string(format) + " needs the token " + token +
              ", which this tokenizer does not have");
}

void append(std::vector<int32_t>& out, const std::vector<int32_t>& more) { out.insert(out.end(), more.begin(), more.end()); }

std::vector<int32_t> text_ids(const Tokenizer& tokenizer, std::string_view text) {
  return tokenizer.encode(text, EncodeOptions{.add_special_tokens = false, .split_special_tokens = true});
}

std::string trim(std::string_view s) {
  const char* space = " \t\n\r\f\v";
  size_t begin = s.find_first_not_of(space);
  if (begin == std::string_view::npos) return {};
  size_t end = s.find_last_not_of(space);
  return std::string(s.substr(begin, end - begin + 1));
}

std::vector<int32_t> llama3(const Tokenizer& tok, const ChatPrompt& prompt, const ChatHistory& history) {
  ChatFormat f = ChatFormat::llama3;
  int32_t begin = require_token(tok, "<|begin_of_text|>", f), header_start = require_token(tok, "<|start_header_id|>", f),
          header_end = require_token(tok, "<|end_header_id|>", f), eot = require_token(tok, "<|eot_id|>", f);
  std::vector<int32_t> ids{begin};
  auto header = [&](std::string_view role) {
    ids.push_back(header_start);
    append(ids, text_ids(tok, role));
    ids.push_back(header_end);
  };
  auto turn = [&](std::string_view role, std::string_view content) {
    header(role);
    append(ids, text_ids(tok, "\n\n" + trim(content)));
    ids.push_back(eot);
  };
  if (prompt.system) turn("system", *prompt.system);
  for (const auto& [user, assistant] : history) turn("user", user), turn("assistant", assistant);
  turn("user", prompt.user);
  header("assistant");
  append(ids, text_ids(tok, "\n\n"));
  return ids;
}

std::vector<int32_t> chatml(const Tokenizer& tok, const ChatPrompt& prompt, const ChatHistory& history) {
  ChatFormat f = ChatFormat::chatml;
  int32_t start = require_token(tok, "<|im_start|>", f), end = require_token(tok, "<|im_end|>", f);
  std::vector<int32_t> ids;
  auto turn = [&](std::string_view role, std::string_view content) {
    ids.push_back(start);
    append(ids, text_ids(tok, std::string(role) + "\n" + std::string(content)));
    ids.push_back(end);
    append(ids, text_ids(tok, "\n"));
  };
  if (prompt.system) turn("system", *prompt.system);
  for (const auto& [user, assistant] : history) turn("user", user), turn("assistant", assistant);
  turn("user", prompt.user);
  ids.push_back(start);
  append(ids, text_ids(tok, "assistant\n"));
  return ids;
}

std::vector<int32_t> inst(const Tokenizer& tok, const ChatPrompt& prompt, const ChatHistory& history) {
  std::optional<int32_t> bos = tok.bos_id();
  if (!bos) bos = tok.token_to_id("<s>");
  if (!bos) throw Error("chat format inst needs a BOS token (<s>), which this tokenizer does not have");
  // The system message goes into the first user turn; each answer ends with </s>.
  std::vector<std::string> users;
  for (const auto& turn : history) users.push_back(turn.first);
  users.push_back(prompt.user);
  if (prompt.system) users[0] = *prompt.system + "\n\n" + users[0];
  std::optional<int32_t> eos = tok.token_to_id("</s>");
  if (!history.empty() && !eos) throw Error("chat format inst needs </s> to end earlier answers");
  std::vector<int32_t> ids{*bos};
  auto open = tok.token_to_id("[INST]"), close = tok.token_to_id("[/INST]");
  for (size_t i = 0; i < users.size(); ++i) {
    if (open && close && tok.is_special(*open)) {
      // Control-token vocabularies (Mistral v3): [INST] and [/INST] are single special tokens.
      ids.push_back(*open);
      append(ids, text_ids(tok, " " + users[i]));
      ids.push_back(*close);
    } else {
      append(ids, text_ids(tok, "[INST] " + users[i] + " [/INST]"));
    }
    if (i < history.size()) {
      append(ids, text_ids(tok, " " + history[i].second));
      ids.push_back(*eos);
    }
  }
  return ids;
}

// Gemma's template: BOS, turns '<start_of_turn>' role '\n' trim(content) '<end_of_turn>\n' (the
// assistant's role is 'model'), then '<start_of_turn>model\n'. Gemma 3's folds a system message
// into the first user turn as system + '\n\n' (Gemma 2's template rejects a system role; we fold
// it the Gemma 3 way).
std::vector<int32_t> gemma(const Tokenizer& tok, const ChatPrompt& prompt, const ChatHistory& history) {
  ChatFormat f = ChatFormat::gemma;
  int32_t start = require_token(tok, "<start_of_turn>", f), end = require_token(tok, "<end_of_turn>", f);
  std::optional<int32_t> bos = tok.bos_id();
  if (!bos) bos = tok.token_to_id("<bos>");
  if (!bos) throw Error("chat format gemma needs a BOS token (<bos>), which this tokenizer does not have");
  std::vector<int32_t> ids{*bos};
  auto turn = [&](std::string_view role, const std::string& content) {
    ids.push_back(start);
    append(ids, text_ids(tok, std::string(role) + "\n" + content));
    ids.push_back(end);
    append(ids, text_ids(tok, "\n"));
  };
  std::string system = prompt.system ? *prompt.system + "\n\n" : std::string();
  for (const auto& [user, assistant] : history) {
    turn("user", system + trim(user));
    system.clear();
    turn("model", trim(assistant));
  }
  turn("user", system + trim(prompt.user));
  ids.push_back(start);
  append(ids, text_ids(tok, "model\n"));
  return ids;
}

// Phi-3/3.5's template: '<|system|>\n' system '<|end|>\n' (when given), '<|user|>\n' text
// '<|end|>\n' (and '<|assistant|>\n' answer '<|end|>\n' per earlier turn), then
// '<|assistant|>\n'; no BOS.
std::vector<int32_t> phi3(const Tokenizer& tok, const ChatPrompt& prompt, const ChatHistory& history) {
  ChatFormat f = ChatFormat::phi3;
  int32_t user = require_token(tok, "<|user|>", f), assistant = require_token(tok, "<|assistant|>", f),
          end = require_token(tok, "<|end|>", f);
  std::vector<int32_t> ids;
  auto turn = [&](int32_t role, std::string_view content) {
    ids.push_back(role);
    std::string text = "\n";  // (not "\n" + std::string(...): GCC 12 warns a false -Wrestrict there)
    text += content;
    append(ids, text_ids(tok, text));
    ids.push_back(end);
    append(ids, text_ids(tok, "\n"));
  };
  if (prompt.system && !prompt.system->empty()) turn(require_token(tok, "<|system|>", f), *prompt.system);
  for (const auto& [u, a] : history) turn(user, u), turn(assistant, a);
  turn(user, prompt.user);
  ids.push_back(assistant);
  append(ids, text_ids(tok, "\n"));
  return ids;
}

std::vector<int32_t> encode_chat_turns(const Tokenizer& tokenizer, const ChatPrompt& prompt, const ChatHistory& history,
                                       ChatFormat format) {
  switch (format) {
    case ChatFormat::llama3: return llama3(tokenizer, prompt, history);
    case ChatFormat::chatml: return chatml(tokenizer, prompt, history);
    case ChatFormat::inst: return inst(tokenizer, prompt, history);
    case ChatFormat::gemma: return gemma(tokenizer, prompt, history);
    case ChatFormat::phi3: return phi3(tokenizer, prompt, history);
  }
  throw Error("unknown chat format");
}

}  // namespace

const char* to_string(ChatFormat format) {
  switch (format) {
    case ChatFormat::llama3: return "llama3";
    case ChatFormat::chatml: return "chatml";
    case ChatFormat::inst: return "inst";
    case ChatFormat::gemma: return "gemma";
    case ChatFormat::phi3: return "phi3";
  }
  return "unknown";
}

std::optional<ChatFormat> detect_chat_format(const Tokenizer& tok) {
  if (tok.token_to_id("<|start_header_id|>") && tok.token_to_id("<|end_header_id|>") && tok.token_to_id("<|eot_id|>"))
    return ChatFormat::llama3;
  if (tok.token_to_id("<|im_start|>") && tok.token_to_id("<|im_end|>")) return ChatFormat::chatml;
  if (tok.token_to_id("<start_of_turn>") && tok.token_to_id("<end_of_turn>")) return ChatFormat::gemma;
  if (tok.token_to_id("<|user|>") && tok.token_to_id("<|assistant|>") && tok.token_to_id("<|end|>"))
    return ChatFormat::phi3;
  if (tok.token_to_id("[INST]") || (tok.token_to_id("<s>") && tok.token_to_id("</s>"))) return ChatFormat::inst;
  return std::nullopt;
}

std::vector<int32_t> encode_chat(const Tokenizer& tokenizer, const ChatPrompt& prompt) {
  std::optional<ChatFormat> format = detect_chat_format(tokenizer);
  if (!format)
    throw Error("--chat: this tokenizer has none of the special tokens of a known chat format (Llama-3 "
                "<|start_header_id|>, ChatML <|im_start|>, Gemma <start_of_turn>, Phi-3 <|user|>, Mistral [INST] or "
                "<s>/</s>); use -p without --chat");
  return encode_chat(tokenizer, prompt, *format);
}

std::vector<int32_t> encode_chat(const Tokenizer& tokenizer, const ChatPrompt& prompt, ChatFormat format) {
  return encode_chat_turns(tokenizer, prompt, {}, format);
}

std::vector<int32_t> encode_chat(const Tokenizer& tokenizer, const ChatPrompt& prompt, const ChatHistory& history) {
  std::optional<ChatFormat> format = detect_chat_format(tokenizer);
  if (!format) throw Error("this tokenizer has none of the special tokens of a known chat format");
  return encode_chat_turns(tokenizer, prompt, history, *format);
}

}  // namespace headinfer
