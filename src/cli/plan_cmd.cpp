#include "commands.h"
namespace headinfer::cli {
void add_plan_command(CLI::App&) {}
}  // namespace headinfer::cli
