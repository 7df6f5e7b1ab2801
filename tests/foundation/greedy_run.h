#pragma once
// A greedy run through the Engine with every step's logits kept, and the logit check against a
// transformers reference: what the end-to-end model tests share.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "headinfer/engine.h"
#include "npy.h"

namespace headinfer::test {

struct GreedyRun {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;  // [steps][vocab]
};

inline GreedyRun run_greedy(const std::filesystem::path& model_dir, const std::vector<int32_t>& prompt, int64_t n_new,
                            int64_t chunk = 0) {  // 0: the planner picks
  auto ckpt = Checkpoint::open(model_dir);
  auto device = make_cpu_device({});
  EngineOptions eo;
  eo.context = static_cast<int64_t>(prompt.size()) + n_new;
  eo.chunk = chunk;
  Engine engine(*ckpt, *device, eo);
  GenerateOptions go;
  go.max_new_tokens = n_new;
  go.ignore_eos = true;
  GreedyRun r;
  GenerateCallbacks cb;
  cb.on_logits = [&](std::span<const float> l) { r.logits.emplace_back(l.begin(), l.end()); };
  r.tokens = generate(engine, prompt, go, cb).tokens;
  return r;
}

// Per step: max |ours - ref| <= rtol * max |ref| (the reference .npy is [steps, vocab]). Returns
// the largest max|ours - ref| / max|ref| over the steps.
inline float expect_logits_near(const GreedyRun& r, const std::filesystem::path& ref_npy, float rtol,
                               const std::string& what) {
  const NpyArray logits = read_npy_f32(ref_npy);
  EXPECT_EQ(logits.shape[0], static_cast<int64_t>(r.logits.size())) << what;
  if (logits.shape[0] != static_cast<int64_t>(r.logits.size())) return INFINITY;
  float worst = 0.0f;
  const int64_t vocab = logits.shape[1];
  for (size_t step = 0; step < r.logits.size(); ++step) {
    const float* ref_row = logits.data.data() + step * vocab;
    float scale = 0.0f, err = 0.0f;
    for (int64_t i = 0; i < vocab; ++i) {
      scale = std::max(scale, std::fabs(ref_row[i]));
      err = std::max(err, std::fabs(r.logits[step][i] - ref_row[i]));
    }
    EXPECT_LE(err, rtol * scale) << what << " step " << step;
    worst = std::max(worst, err / scale);
  }
  return worst;
}

}  // namespace headinfer::test
