#pragma once
// Byte sizes on the command line: "24GiB", "1TiB", "512MiB", "24GB" (decimal), "24G" (binary, as
// parse_count reads K/M/G), "1.5GiB", or a plain byte count.
#include <cstdint>
#include <string>

namespace headinfer::cli {

// Throws Error naming `flag` for anything else, for zero, and for sizes past 2^62 bytes.
int64_t parse_byte_size(const std::string& text, const char* flag);

}  // namespace headinfer::cli
