#pragma once
// Tokenizer: reads a Hugging Face tokenizer.json and produces exactly the ids HF tokenizers
// produces (BPE, byte-level or SentencePiece-style with byte fallback, added tokens, the usual
// normalizers / pre-tokenizers / decoders / post-processors). Anything it cannot reproduce
// exactly is rejected at load time with one headinfer::Error naming the component.
//
// Typical use by `generate`:
//
//   auto tok = headinfer::Tokenizer::from_model_dir(dir);          // dir/tokenizer.json
//   std::vector<int32_t> ids = tok.encode(prompt, /*add_special_tokens=*/true);  // BOS etc.
//   // or, for --chat:
//   ids = headinfer::encode_chat(tok, {.system = system_text, .user = prompt});
//
//   headinfer::StreamDecoder stream(tok);
//   stream.prime(ids);                          // prompt context: keeps the first word's space
//   for (int32_t id : generated) fputs(stream.push(id).c_str(), stdout);
//   fputs(stream.flush().c_str(), stdout);
//
// A Tokenizer is immutable after loading: encode/decode may run concurrently from many threads.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace headinfer {

struct EncodeOptions {
  // Apply the post-processor (e.g. Llama's BOS). HF's `add_special_tokens`.
  bool add_special_tokens = true;
  // Treat special added tokens in the text as plain text (HF's `split_special_tokens`), so a
  // prompt cannot inject control tokens. Non-special added tokens still match.
  bool split_special_tokens = false;
};

class Tokenizer {
 public:
  // Throws headinfer::Error: unreadable file, invalid JSON, unsupported component, or an
  // inconsistent vocabulary (e.g. a merge naming a token that is not in the vocabulary).
  static Tokenizer from_file(const std::filesystem::path& path);
  // `origin` names the source in error messages.
  static Tokenizer from_json(std::string_view json_text, std::string_view origin = "tokenizer.json");
  // `dir`/tokenizer.json.
  static Tokenizer from_model_dir(const std::filesystem::path& dir);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Throws headinfer::Error when `text` is not valid UTF-8.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;
  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& options) const;

  // HF's decode. Throws headinfer::Error for an id that names no token.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // One past the largest id of the model vocabulary and the added tokens.
  int32_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;  // added tokens first
  std::optional<std::string> id_to_token(int32_t id) const;
  // True for added tokens marked "special" (what skip_special_tokens drops).
  bool is_special(int32_t id) const;

  // The ids the post-processor puts in front of a sequence (Llama: {<s>}, Llama-3:
  // {<|begin_of_text|>}, Qwen2: none); bos_id() is the first of them.
  std::vector<int32_t> prefix_special_ids() const;
  std::optional<int32_t> bos_id() const;
  // Ids of the well-known end-of-sequence / end-of-turn added tokens of this tokenizer
  // (</s>, <|end_of_text|>, <|eot_id|>, <|eom_id|>, <|endoftext|>, <|im_end|>). A fallback
  // for when the checkpoint's config/generation_config names no eos_token_id.
  std::vector<int32_t> stop_ids() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Incremental detokenizer for streaming output: push ids one at a time and print what comes
// back. Text is only released once it is stable: never a partial UTF-8 sequence, and spaces
// that a SentencePiece decoder strips at the start of a sequence are kept mid-sequence.
// Concatenating every push() and the final flush() gives decode(all ids) for the usual
// decoders. Holds a reference to the tokenizer, which must outlive it.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true);

  // Sets context that is not printed (the prompt); only its last few ids are kept.
  void prime(std::span<const int32_t> context_ids);
  // Returns the text that became printable with `id` (often empty while bytes accumulate).
  std::string push(int32_t id);
  // Returns whatever is still held back (an incomplete byte sequence shows as U+FFFD) and
  // forgets the context.
  std::string flush();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_tokens_;
  std::vector<int32_t> window_;  // ids still needed to decode the next piece of text
  std::string prefix_text_;      // decode of window_[0, prefix_length_)
  size_t prefix_length_ = 0;
};

// Chat wrapping for `generate --chat`, without running the Jinja chat_template.
enum class ChatFormat {
  llama3,  // <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\ntext<|eot_id|>...
  chatml,  // <|im_start|>role\ntext<|im_end|>\n ... <|im_start|>assistant\n  (Qwen)
  inst,    // <s>[INST] system\n\nuser [/INST]  (Mistral; also Llama-2 style vocabularies)
  gemma,   // <bos><start_of_turn>user\n[system\n\n]text<end_of_turn>\n<start_of_turn>model\n  (Gemma 2/3)
  phi3,    // [<|system|>\nsystem<|end|>\n]<|user|>\ntext<|end|>\n<|assistant|>\n  (Phi-3/3.5)
};

struct ChatPrompt {
  std::optional<std::string> system;  // omitted when absent (no default system prompt is added)
  std::string user;
};
// Earlier turns of a conversation, oldest first: (user, assistant) pairs before ChatPrompt::user.
using ChatHistory = std::vector<std::pair<std::string, std::string>>;

const char* to_string(ChatFormat format);

// Picks the format from the tokenizer's special tokens: <|start_header_id|> -> llama3,
// <|im_start|> -> chatml, <start_of_turn>/<end_of_turn> -> gemma, <|user|>/<|assistant|>/<|end|>
// -> phi3, [INST] or a <s>/</s> SentencePiece vocabulary -> inst.
std::optional<ChatFormat> detect_chat_format(const Tokenizer& tokenizer);

// The prompt ids for one user turn, ending where the assistant's reply starts. Throws
// headinfer::Error when no format applies to this tokenizer (or `format` needs tokens it lacks).
// Each text is encoded on its own (as the model's template would split it at special tokens);
// role headers are special tokens, never parsed out of user text.
std::vector<int32_t> encode_chat(const Tokenizer& tokenizer, const ChatPrompt& prompt);
std::vector<int32_t> encode_chat(const Tokenizer& tokenizer, const ChatPrompt& prompt, ChatFormat format);
// A conversation: the system message, the earlier turns, then prompt.user (the server's chat).
std::vector<int32_t> encode_chat(const Tokenizer& tokenizer, const ChatPrompt& prompt, const ChatHistory& history);

}  // namespace headinfer
