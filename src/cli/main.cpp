#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <exception>

#include "commands.h"
#include "headinfer/error.h"

namespace {

// Checkpoints are memory-mapped and validated against their size when opened; a file that
// shrinks afterwards (rewritten or truncated while we run) turns the next read of a lost page
// into SIGBUS. Say so in one line and exit 1, as for any bad input, instead of dying with "Bus
// error". Nothing has been printed to stdout in --json mode (the object comes at the end), and
// _exit leaves buffered output unwritten. Only write() and _exit(): async-signal-safe.
extern "C" void on_sigbus(int) {
  static const char kMessage[] =
      "error: a memory-mapped input file (the checkpoint) shrank or became unreadable while it was being read "
      "(SIGBUS): was it rewritten during the run? check the files and run again\n";
  const ssize_t written = ::write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
  (void)written;
  ::_exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  struct sigaction sa {};
  sa.sa_handler = on_sigbus;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGBUS, &sa, nullptr);
  CLI::App app{"headinfer: exact long-context LLM inference with a head-wise KV cache"};
  app.require_subcommand(1);
  headinfer::cli::add_generate_command(app);
  headinfer::cli::add_make_model_command(app);
  headinfer::cli::add_tokenize_command(app);
  headinfer::cli::add_plan_command(app);
  headinfer::cli::add_bench_command(app);
#ifdef HEADINFER_WITH_SERVER
  headinfer::cli::add_serve_command(app);
#endif
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const headinfer::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of host memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: internal: %s\n", e.what());
    return 2;
  }
  return 0;
}
