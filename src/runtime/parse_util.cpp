#include "headinfer/options.h"

#include <cctype>
#include <limits>

#include "headinfer/error.h"

namespace headinfer {

std::vector<int32_t> parse_id_list(const std::string& text, const char* flag) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ' ' || text[i] == ',')) ++i;
    if (i == text.size()) break;
    size_t j = i;
    while (j < text.size() && std::isdigit(static_cast<unsigned char>(text[j]))) ++j;
    if (j == i || j - i > 9)
      throw Error(std::string(flag) + ": expected comma-separated token ids, got '" + text + "'");
    ids.push_back(static_cast<int32_t>(std::stol(text.substr(i, j - i))));
    i = j;
  }
  return ids;
}

int64_t parse_count(const std::string& text, const char* flag) {
  size_t end = 0;
  while (end < text.size() && std::isdigit(static_cast<unsigned char>(text[end]))) ++end;
  const std::string digits = text.substr(0, end), suffix = text.substr(end);
  int64_t mult = 1;
  if (suffix == "K" || suffix == "k") mult = 1024;
  else if (suffix == "M" || suffix == "m") mult = 1024 * 1024;
  else if (suffix == "G" || suffix == "g") mult = int64_t{1024} * 1024 * 1024;
  else if (!suffix.empty()) throw Error(std::string(flag) + ": expected a count like 4096, 128K or 1M, got '" + text + "'");
  if (digits.empty() || digits.size() > 12)
    throw Error(std::string(flag) + ": expected a count like 4096, 128K or 1M, got '" + text + "'");
  const int64_t v = std::stoll(digits);
  if (v <= 0) throw Error(std::string(flag) + ": must be positive");
  if (v > std::numeric_limits<int64_t>::max() / mult) throw Error(std::string(flag) + ": '" + text + "' is too large");
  return v * mult;
}

}  // namespace headinfer
