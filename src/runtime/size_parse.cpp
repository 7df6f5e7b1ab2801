#include "headinfer/options.h"

#include <cctype>
#include <cmath>

#include "headinfer/error.h"

namespace headinfer {

int64_t parse_byte_size(const std::string& text, const char* flag) {
  const std::string bad = std::string(flag) + ": expected a size like 24GiB, 512MiB, 1TiB or 24GB, got '" + text + "'";
  size_t end = 0;
  bool dot = false;
  while (end < text.size() &&
         (std::isdigit(static_cast<unsigned char>(text[end])) || (text[end] == '.' && !dot))) {
    dot = dot || text[end] == '.';
    ++end;
  }
  const std::string number = text.substr(0, end);
  std::string unit = text.substr(end);
  while (!unit.empty() && unit.front() == ' ') unit.erase(0, 1);
  if (number.empty() || number == "." || number.size() > 24) throw Error(bad);
  for (char& ch : unit) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  double mult = 0;
  // KiB and a bare K are binary; KB is decimal (SI), as disk and GPU vendors write it.
  static constexpr struct { const char* name; double mult; } kUnits[] = {
      {"", 1},          {"b", 1},
      {"k", 0x1p10},    {"kib", 0x1p10}, {"kb", 1e3},
      {"m", 0x1p20},    {"mib", 0x1p20}, {"mb", 1e6},
      {"g", 0x1p30},    {"gib", 0x1p30}, {"gb", 1e9},
      {"t", 0x1p40},    {"tib", 0x1p40}, {"tb", 1e12},
  };
  for (const auto& u : kUnits)
    if (unit == u.name) mult = u.mult;
  if (mult == 0) throw Error(bad);
  const double bytes = std::stod(number) * mult;
  if (!(bytes >= 1)) throw Error(std::string(flag) + ": must be at least 1 byte, got '" + text + "'");
  if (bytes > 0x1p62) throw Error(std::string(flag) + ": '" + text + "' is too large");
  return static_cast<int64_t>(std::llround(bytes));
}

}  // namespace headinfer
