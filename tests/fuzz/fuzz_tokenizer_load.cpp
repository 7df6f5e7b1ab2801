// tokenizer.json text -> Tokenizer::from_json. A tokenizer that loads must then encode and decode
// a fixed text without anything but headinfer::Error (decode of what encode gave must not throw).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz_util.h"
#include "headinfer/error.h"
#include "headinfer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace headinfer;
  try {
    const Tokenizer tok = Tokenizer::from_json(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
    const char* text = "Hello, wörld! 12 <s> \xe2\x96\x81 \n\t";
    // Without the post-processor every id is a token; the post-processor's ids are the file's
    // word (as in HF tokenizers), checked against the model's vocabulary by the faces.
    const std::vector<int32_t> ids = tok.encode(text, false);
    for (int32_t id : ids)
      if (id < 0 || id >= tok.vocab_size() || !tok.id_to_token(id)) fuzz::fail("encode gave an id that names no token");
    (void)tok.decode(ids, false);
    const std::vector<int32_t> with_special = tok.encode(text, true);
    (void)tok.decode(with_special, true);  // may throw Error for a post-processor id outside the vocabulary
  } catch (const Error&) {
  }
  return 0;
}
