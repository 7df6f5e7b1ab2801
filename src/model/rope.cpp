// Inverse RoPE frequencies exactly as transformers computes them: fp32 tensors, with the scalar
// parameters (theta, factors) entering as Python floats.
#include <algorithm>
#include <cmath>
#include <numbers>

#include "headinfer/model.h"

namespace headinfer {
namespace {

// base ** (2i / dim) in fp32, as `base ** (torch.arange(0, dim, 2).float() / dim)`.
std::vector<float> pos_freqs(double base, int64_t dim) {
  std::vector<float> p(static_cast<size_t>(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    p[static_cast<size_t>(i)] = static_cast<float>(std::pow(static_cast<double>(static_cast<float>(base)),
                                                            static_cast<double>(exponent)));
  }
  return p;
}

}  // namespace

std::vector<float> rope_inv_freq(const RopeConfig& rope, int64_t dim, bool long_factors) {
  const std::vector<float> base_pow = pos_freqs(rope.theta, dim);
  std::vector<float> inv(base_pow.size());
  for (size_t i = 0; i < inv.size(); ++i) inv[i] = 1.0f / base_pow[i];

  switch (rope.type) {
    case RopeType::Default:
      break;
    case RopeType::Linear:
      for (float& f : inv) f /= static_cast<float>(rope.factor);
      break;
    case RopeType::Llama3: {
      const float factor = static_cast<float>(rope.factor);
      const double old_ctx = static_cast<double>(rope.original_max_position_embeddings);
      const double low_wavelen = old_ctx / rope.low_freq_factor;
      const double high_wavelen = old_ctx / rope.high_freq_factor;
      for (float& f : inv) {
        const float wavelen = static_cast<float>(2 * std::numbers::pi) / f;
        float scaled = wavelen > low_wavelen ? f / factor : f;
        const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
        if (medium) {
          const float smooth = (static_cast<float>(old_ctx) / wavelen - static_cast<float>(rope.low_freq_factor)) /
                               static_cast<float>(rope.high_freq_factor - rope.low_freq_factor);
          scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
        }
        f = scaled;
      }
      break;
    }
    case RopeType::Longrope: {
      // 1 / (ext_factors * base ** (arange(0, dim, 2) / dim)), the factors an fp32 tensor.
      const std::vector<double>& ext = long_factors ? rope.long_factor : rope.short_factor;
      for (size_t i = 0; i < inv.size(); ++i) inv[i] = 1.0f / (static_cast<float>(ext[i]) * base_pow[i]);
      break;
    }
    case RopeType::Yarn: {
      const double base = rope.theta;
      const double orig = static_cast<double>(rope.original_max_position_embeddings);
      auto correction_dim = [&](double rotations) {
        return (static_cast<double>(dim) * std::log(orig / (rotations * 2 * std::numbers::pi))) / (2 * std::log(base));
      };
      double low = correction_dim(rope.beta_fast);
      double high = correction_dim(rope.beta_slow);
      if (rope.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(dim - 1));
      if (low == high) high += 0.001;  // transformers: prevent singularity
      const float factor = static_cast<float>(rope.factor);
      for (size_t i = 0; i < inv.size(); ++i) {
        float ramp = (static_cast<float>(i) - static_cast<float>(low)) / static_cast<float>(high - low);
        ramp = std::clamp(ramp, 0.0f, 1.0f);
        const float extrapolation = 1.0f - ramp;
        const float interpolated = 1.0f / (factor * base_pow[i]);
        inv[i] = interpolated * (1.0f - extrapolation) + inv[i] * extrapolation;
      }
      break;
    }
  }
  return inv;
}

}  // namespace headinfer
