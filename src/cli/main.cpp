#include <cstdio>
#include <exception>

#include "commands.h"
#include "headinfer/error.h"

int main(int argc, char** argv) {
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
