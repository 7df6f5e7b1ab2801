// parse_safetensors on arbitrary bytes: the header length, the JSON header, dtypes, shapes and
// data offsets. Either one headinfer::Error, or tensors that lie inside the image, in order,
// without overlap, each numel x dtype size bytes long.
#include <cstddef>
#include <cstdint>

#include "fuzz_util.h"
#include "headinfer/checkpoint.h"
#include "headinfer/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace headinfer;
  std::vector<TensorView> tensors;
  try {
    tensors = parse_safetensors(data, size, "fuzz.safetensors");
  } catch (const Error&) {
    return 0;
  }
  const auto* end = data + size;
  for (const TensorView& t : tensors) {
    const auto* begin = static_cast<const uint8_t*>(t.data);
    if (begin < data || begin > end || t.nbytes > static_cast<size_t>(end - begin))
      fuzz::fail("tensor outside the image");
    if (static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype) != t.nbytes) fuzz::fail("byte size != numel x dtype size");
  }
  return 0;
}
