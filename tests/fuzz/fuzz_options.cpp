// The option parsers every face shares (include/headinfer/options.h): byte sizes, counts and id
// lists. Byte 0 picks the parser; the rest is the text. Either one headinfer::Error, or a value
// inside the documented range.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "headinfer/error.h"
#include "headinfer/options.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace headinfer;
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    switch (data[0] % 3) {
      case 0: {
        const int64_t bytes = parse_byte_size(text, "--host-mem");
        if (bytes < 1 || bytes > (int64_t{1} << 62)) fuzz::fail("byte size outside [1, 2^62]");
        break;
      }
      case 1: {
        if (parse_count(text, "--ctx") <= 0) fuzz::fail("count not positive");
        break;
      }
      case 2: {
        for (int32_t id : parse_id_list(text, "--prompt-ids"))
          if (id < 0) fuzz::fail("negative id");
        break;
      }
    }
  } catch (const Error&) {
  }
  return 0;
}
