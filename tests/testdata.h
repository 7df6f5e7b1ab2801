#pragma once
// Where the shared test data lives: $HEADINFER_TESTDATA, else ../shared/testdata beside the
// checkout. Tests that need it call HEADINFER_REQUIRE_TESTDATA() and are reported as skipped,
// never as passed, when it is absent.
#include <cstdlib>
#include <filesystem>

#include <gtest/gtest.h>

namespace headinfer::test {

inline std::filesystem::path testdata_dir() {
  if (const char* env = std::getenv("HEADINFER_TESTDATA")) return env;
  return std::filesystem::path(HEADINFER_SOURCE_DIR).parent_path() / "shared" / "testdata";
}

inline bool have_testdata() { return std::filesystem::is_directory(testdata_dir()); }

}  // namespace headinfer::test

#define HEADINFER_REQUIRE_TESTDATA()                                                        \
  do {                                                                                      \
    if (!::headinfer::test::have_testdata())                                                \
      GTEST_SKIP() << "shared test data not found at " << ::headinfer::test::testdata_dir(); \
  } while (0)
