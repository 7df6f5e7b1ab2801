#pragma once
// Token sampling: greedy at temperature 0, otherwise temperature, then top-k, then top-p
// (transformers' order), drawn from a seeded generator.
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace headinfer {

struct SamplerOptions {
  float temperature = 0.0f;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& options);
  int32_t sample(std::span<const float> logits);
  const SamplerOptions& options() const { return options_; }
  // The next uniform in [0, 1) of this sampler's seeded generator, for a device-side draw.
  double next_uniform() { return std::generate_canonical<double, 53>(rng_); }

 private:
  int32_t draw(const std::vector<double>& probs, size_t keep, double total);
  SamplerOptions options_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;  // reused across calls
  std::vector<double> probs_;
};

// Index of the largest logit; the lowest index wins a tie (as torch.argmax).
int32_t argmax(std::span<const float> logits);

}  // namespace headinfer
