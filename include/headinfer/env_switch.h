#pragma once
// A/B switches of the engine's prefill and decode paths (issue 11): a variable read from the
// environment, "1" on, "0" off, unset or anything else the compiled default. Each switch is read
// once, at start-up (a namespace-scope constant beside the code it switches), and names the numbers
// it changes in its own comment.
#include <cstdlib>
#include <cstring>

namespace headinfer {

inline bool env_switch(const char* name, bool compiled_default) {
  const char* v = std::getenv(name);
  if (v != nullptr && std::strcmp(v, "1") == 0) return true;
  if (v != nullptr && std::strcmp(v, "0") == 0) return false;
  return compiled_default;
}

}  // namespace headinfer
