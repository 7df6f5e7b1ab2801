#include "progress.h"

#include <unistd.h>

#include <cstdio>

namespace headinfer::cli {
namespace {

std::string format_duration(double seconds) {
  const auto s = static_cast<long long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, (s / 60) % 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
  return buf;
}

}  // namespace

ProgressReporter::ProgressReporter(std::string label, int64_t min_total)
    : label_(std::move(label)), min_total_(min_total), tty_(::isatty(STDERR_FILENO) != 0) {}

void ProgressReporter::update(int64_t done, int64_t total) {
  if (total < min_total_) return;
  const auto now = std::chrono::steady_clock::now();
  if (!started_) {
    started_ = true;
    start_ = now;
    last_print_ = now;
  }
  const bool finished = done >= total;
  // A terminal is redrawn ~5 times a second; a log gets a line every 10 s.
  const double interval = tty_ ? 0.2 : 10.0;
  if (!finished && std::chrono::duration<double>(now - last_print_).count() < interval) return;
  last_print_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total - done) / rate : 0.0;
  std::fprintf(stderr, "%s%s %lld/%lld tokens (%.0f%%), %.0f tok/s, %s %s%s", tty_ ? "\r" : "", label_.c_str(),
               static_cast<long long>(done), static_cast<long long>(total),
               100.0 * static_cast<double>(done) / static_cast<double>(total), rate,
               finished ? "took" : "ETA", format_duration(finished ? elapsed : eta).c_str(),
               tty_ && !finished ? "   " : "\n");
  std::fflush(stderr);
}

}  // namespace headinfer::cli
