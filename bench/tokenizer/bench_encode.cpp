// Encode throughput of headinfer's tokenizer, single thread: load time of tokenizer.json, then
// MB/s over a corpus file encoded document by document (documents are separated by blank
// lines), best of several passes. Prints one JSON object; bench/tokenizer/run.sh puts it next
// to Hugging Face tokenizers on the same corpus. With IDS_OUT, writes the ids of each document
// as one line, for bench_hf.py to check that both produced the same tokens.
//   tokenizer_bench TOKENIZER_JSON CORPUS [PASSES [IDS_OUT]]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "headinfer/error.h"
#include "headinfer/tokenizer.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::vector<std::string> split_documents(const std::string& corpus) {
  std::vector<std::string> docs;
  size_t pos = 0;
  while (pos < corpus.size()) {
    size_t end = corpus.find("\n\n", pos);
    if (end == std::string::npos) end = corpus.size();
    else end += 2;
    docs.push_back(corpus.substr(pos, end - pos));
    pos = end;
  }
  return docs;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s TOKENIZER_JSON CORPUS [PASSES [IDS_OUT]]\n", argv[0]);
    return 2;
  }
  int passes = argc > 3 ? std::atoi(argv[3]) : 3;
  try {
    auto start = std::chrono::steady_clock::now();
    headinfer::Tokenizer tok = headinfer::Tokenizer::from_file(argv[1]);
    double load_s = seconds_since(start);

    std::ifstream in(argv[2], std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    std::string corpus = buffer.str();
    std::vector<std::string> docs = split_documents(corpus);

    double best = 1e30;
    size_t n_tokens = 0;
    for (int p = 0; p < passes; ++p) {
      n_tokens = 0;
      start = std::chrono::steady_clock::now();
      for (const std::string& doc : docs) n_tokens += tok.encode(doc, false).size();
      best = std::min(best, seconds_since(start));
    }
    if (argc > 4) {
      std::ofstream out(argv[4], std::ios::binary);
      for (const std::string& doc : docs) {
        std::string line;
        for (int32_t id : tok.encode(doc, false)) line += (line.empty() ? "" : " ") + std::to_string(id);
        out << line << '\n';
      }
    }
    double mb = double(corpus.size()) / 1e6;
    std::printf("{\"impl\": \"headinfer\", \"tokenizer\": \"%s\", \"load_s\": %.3f, \"corpus_mb\": %.2f, "
                "\"documents\": %zu, \"tokens\": %zu, \"encode_s\": %.3f, \"mb_per_s\": %.2f}\n",
                argv[1], load_s, mb, docs.size(), n_tokens, best, mb / best);
  } catch (const headinfer::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
