#pragma once
// EngineOptions for a context and a prefill chunk, everything else default (tests build many).
#include <cstdint>

#include "headinfer/engine.h"

namespace headinfer {

inline EngineOptions context_of(int64_t context, int64_t chunk) {
  EngineOptions eo;
  eo.context = context;
  eo.chunk = chunk;
  return eo;
}

}  // namespace headinfer
