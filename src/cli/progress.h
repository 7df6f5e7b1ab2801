#pragma once
// Progress of long prefills: tokens done, tokens/s and ETA, redrawn in place on a terminal and
// as a plain line every few seconds otherwise (logs, CI). Written to stderr.
#include <chrono>
#include <cstdint>
#include <string>

namespace headinfer::cli {

class ProgressReporter {
 public:
  // `min_total`: totals smaller than this print nothing (short prompts need no progress).
  explicit ProgressReporter(std::string label, int64_t min_total = 4096);
  void update(int64_t done, int64_t total);

 private:
  std::string label_;
  int64_t min_total_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_print_;
  bool started_ = false;
};

}  // namespace headinfer::cli
