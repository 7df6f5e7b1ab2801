#pragma once
// What every fuzz target shares: the shared test data folder (as tests/testdata.h finds it, without
// GoogleTest), and the rule that a parser may only fail with headinfer::Error: any other exception
// escapes LLVMFuzzerTestOneInput and libFuzzer reports it as a crash, as the CLI would report it as
// "error: internal" with exit status 2.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

namespace headinfer::fuzz {

inline std::filesystem::path testdata_dir() {
  if (const char* env = std::getenv("HEADINFER_TESTDATA")) return env;
  return std::filesystem::path(HEADINFER_SOURCE_DIR).parent_path() / "shared" / "testdata";
}

// A broken promise (not an input error): print it and abort, so libFuzzer keeps the input.
[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "fuzz invariant broken: %s\n", what);
  std::abort();
}

}  // namespace headinfer::fuzz
