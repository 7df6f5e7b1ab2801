#pragma once
// Parsers for command-line values shared by the subcommands.
#include <cstdint>
#include <string>
#include <vector>

namespace headinfer::cli {

// "1,2,3" -> ids; throws Error naming `flag` on anything else.
std::vector<int32_t> parse_id_list(const std::string& text, const char* flag);
// "4096", "128K", "1M", "4M" (K = 1024) -> count; throws Error naming `flag`.
int64_t parse_count(const std::string& text, const char* flag);

}  // namespace headinfer::cli
