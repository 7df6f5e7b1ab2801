// config.json text -> parse_model_config, the way load_model_config reads it (JSON errors of any
// kind become one headinfer::Error). A parsed config must keep the promises the engine relies on.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "headinfer/config.h"
#include "headinfer/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace headinfer;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(reinterpret_cast<const char*>(data), reinterpret_cast<const char*>(data) + size);
  } catch (const nlohmann::json::exception&) {
    return 0;  // load_model_config turns every json::exception into an Error
  }
  ModelConfig c;
  try {
    c = parse_model_config(j, "fuzz/config.json");
  } catch (const Error&) {
    return 0;
  }
  if (c.n_layers <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 || c.head_dim <= 0 || c.hidden_size <= 0 ||
      c.vocab_size <= 0 || c.intermediate_size <= 0)
    fuzz::fail("a size is not positive");
  if (c.n_heads % c.n_kv_heads != 0) fuzz::fail("kv heads do not divide the query heads");
  if (c.head_dim % 2 != 0) fuzz::fail("odd head_dim");
  if (static_cast<int64_t>(c.layer_window.size()) != c.n_layers) fuzz::fail("one window per layer");
  for (int64_t id : c.eos_token_ids)
    if (id < 0 || id >= c.vocab_size) fuzz::fail("eos id outside the vocabulary");
  int64_t product = 0;
  if (__builtin_mul_overflow(c.kv_bytes_per_token(8), int64_t{1}, &product) ||
      __builtin_mul_overflow(c.n_heads, c.head_dim, &product) ||
      __builtin_mul_overflow(c.hidden_size, c.intermediate_size, &product))
    fuzz::fail("sizes overflow int64");
  return 0;
}
