#pragma once
// One error type for everything that comes from outside (files, flags, prompts). The message is
// a single line: what, where, and what to do. The CLI prints it as `error: <message>`.
#include <stdexcept>
#include <string>

namespace headinfer {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace headinfer
