// `headinfer tokenize`: encode a prompt, decode ids, or encode a JSONL batch, with the model
// folder's tokenizer.json (what `generate` uses), for checking against Hugging Face.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "headinfer/error.h"
#include "headinfer/options.h"
#include "headinfer/tokenizer.h"

namespace headinfer::cli {
namespace {

struct TokenizeArgs {
  std::string model_dir;
  std::string tokenizer_file;
  std::string prompt;
  std::string decode_ids;
  std::string input_jsonl;
  bool no_special = false;
  bool json = false;
  bool have_prompt = false;  // -p was given (an empty prompt is valid: it encodes to the BOS alone)
};

Tokenizer load_tokenizer(const TokenizeArgs& a) {
  if (a.model_dir.empty() == a.tokenizer_file.empty())
    throw Error("tokenize: give exactly one of -m DIR and --tokenizer FILE");
  return a.model_dir.empty() ? Tokenizer::from_file(a.tokenizer_file) : Tokenizer::from_model_dir(a.model_dir);
}

std::string join_ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += (s.empty() ? "" : ",") + std::to_string(id);
  return s;
}

void run_encode(const Tokenizer& tok, const TokenizeArgs& a) {
  std::vector<int32_t> ids = tok.encode(a.prompt, !a.no_special);
  if (!a.json) {
    std::printf("%s\n", join_ids(ids).c_str());
    return;
  }
  nlohmann::json tokens = nlohmann::json::array();
  for (int32_t id : ids) tokens.push_back(tok.id_to_token(id).value_or(""));
  nlohmann::json out = {{"ids", ids}, {"tokens", tokens}};
  std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
}

void run_decode(const Tokenizer& tok, const TokenizeArgs& a) {
  std::vector<int32_t> ids = parse_id_list(a.decode_ids, "--decode");
  std::string text = tok.decode(ids, a.no_special);
  if (a.json) std::printf("%s\n", nlohmann::json({{"text", text}}).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  else std::printf("%s\n", text.c_str());
}

// One JSON object per input line with a "text" field -> one line {"ids", "ids_with_special",
// "decoded"} (decoded: decode of ids, special tokens kept, as in the shared HF vectors).
void run_jsonl(const Tokenizer& tok, const TokenizeArgs& a) {
  std::ifstream in(a.input_jsonl, std::ios::binary);
  if (!in) throw Error("--input-jsonl: cannot open " + a.input_jsonl);
  std::string output;
  size_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json row = nlohmann::json::parse(line, nullptr, false);
    std::string where = a.input_jsonl + ":" + std::to_string(line_no);
    if (row.is_discarded()) throw Error(where + ": not valid JSON");
    if (!row.is_object() || !row.contains("text") || !row.at("text").is_string())
      throw Error(where + ": expected an object with a string field \"text\"");
    const std::string& text = row.at("text").get_ref<const std::string&>();
    std::vector<int32_t> ids = tok.encode(text, false);
    nlohmann::json decoded = tok.decode(ids);
    output += "{\"ids\": [" + join_ids(ids) + "], \"ids_with_special\": [" + join_ids(tok.encode(text, true)) +
              "], \"decoded\": " + decoded.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "}\n";
  }
  std::fwrite(output.data(), 1, output.size(), stdout);
}

void run_tokenize(const TokenizeArgs& a) {
  int modes = int(a.have_prompt) + int(!a.decode_ids.empty()) + int(!a.input_jsonl.empty());
  if (modes != 1) throw Error("tokenize: give exactly one of -p TEXT, --decode IDS and --input-jsonl FILE");
  Tokenizer tok = load_tokenizer(a);
  if (a.have_prompt) run_encode(tok, a);
  else if (!a.decode_ids.empty()) run_decode(tok, a);
  else run_jsonl(tok, a);
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Encode text or decode ids with a model's tokenizer.json");
  cmd->add_option("-m,--model", args->model_dir, "Model folder holding tokenizer.json");
  cmd->add_option("--tokenizer", args->tokenizer_file, "A tokenizer.json file");
  CLI::Option* prompt = cmd->add_option("-p,--prompt", args->prompt, "Text to encode (ids printed comma-separated)");
  cmd->add_option("--decode", args->decode_ids, "Comma-separated ids to decode");
  cmd->add_option("--input-jsonl", args->input_jsonl,
                  "Batch: one JSON object with \"text\" per line -> one line of ids, ids_with_special, decoded");
  cmd->add_flag("--no-special", args->no_special,
                "Encode without the post-processor's special tokens (BOS); decode skipping special tokens");
  cmd->add_flag("--json", args->json, "Print JSON (encode: ids and tokens; decode: text)");
  cmd->callback([args, prompt] {
    args->have_prompt = prompt->count() > 0;
    run_tokenize(*args);
  });
}

}  // namespace headinfer::cli
