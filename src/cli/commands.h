#pragma once
// Each `headinfer` subcommand lives in its own file and registers itself on the app. A command's
// options live in a struct owned by its callback (no globals); failures throw headinfer::Error,
// which main() prints as one line.
#include <CLI/CLI.hpp>

namespace headinfer::cli {

void add_generate_command(CLI::App& app);
void add_make_model_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_plan_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_serve_command(CLI::App& app);  // built with cpp-httplib only (HEADINFER_WITH_SERVER)

}  // namespace headinfer::cli
