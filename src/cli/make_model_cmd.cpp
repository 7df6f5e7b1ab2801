// `headinfer make-model`: write a random-weight checkpoint of a built-in shape, so that the engine
// can be run and measured with no download.
#include <cstdio>
#include <memory>
#include <string>

#include "commands.h"
#include "headinfer/error.h"
#include "headinfer/random_model.h"

namespace headinfer::cli {
namespace {

struct MakeModelArgs {
  std::string shape = "tiny";
  std::string out_dir;
  std::string dtype = "bf16";
  uint64_t seed = 0;
};

void run_make_model(const MakeModelArgs& a) {
  DType dtype;
  if (a.dtype == "f32") dtype = DType::F32;
  else if (a.dtype == "bf16") dtype = DType::BF16;
  else if (a.dtype == "f16") dtype = DType::F16;
  else throw Error("--dtype must be f32, bf16 or f16, got '" + a.dtype + "'");
  write_random_checkpoint(a.out_dir, builtin_shape_config(a.shape), dtype, a.seed);
  std::fprintf(stderr, "wrote %s (shape %s, %s, random weights, seed %llu)\n", a.out_dir.c_str(), a.shape.c_str(),
               a.dtype.c_str(), static_cast<unsigned long long>(a.seed));
}

}  // namespace

void add_make_model_command(CLI::App& app) {
  auto args = std::make_shared<MakeModelArgs>();
  CLI::App* cmd = app.add_subcommand("make-model", "Write a random-weight checkpoint of a built-in shape");
  std::string shapes;
  for (const std::string& s : builtin_shape_names()) shapes += (shapes.empty() ? "" : ", ") + s;
  cmd->add_option("--shape", args->shape, "One of: " + shapes)->capture_default_str();
  cmd->add_option("-o,--out", args->out_dir, "Folder to write")->required();
  cmd->add_option("--dtype", args->dtype, "f32, bf16 or f16")->capture_default_str();
  cmd->add_option("--seed", args->seed, "Random seed")->capture_default_str();
  cmd->callback([args] { run_make_model(*args); });
}

}  // namespace headinfer::cli
