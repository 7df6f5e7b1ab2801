#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <span>
#include <vector>

#include "headinfer/error.h"
#include "headinfer/sampler.h"

namespace headinfer {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};

TEST(Sampler, GreedyIsArgmaxLowestIndexOnTies) {
  Sampler s({0.0f, 0, 1.0f, 0});
  EXPECT_EQ(s.sample(kLogits), 1);
}

TEST(Sampler, TopKOfOneIsGreedy) {
  Sampler s({1.5f, 1, 1.0f, 42});
  for (int i = 0; i < 20; ++i) EXPECT_EQ(s.sample(kLogits), 1);
}

TEST(Sampler, SmallTopPKeepsOnlyTheMostLikely) {
  const std::vector<float> logits = {0.0f, 5.0f, 0.0f};
  Sampler s({1.0f, 0, 0.5f, 3});
  for (int i = 0; i < 20; ++i) EXPECT_EQ(s.sample(logits), 1);
}

TEST(Sampler, SameSeedSameDrawsAndFrequenciesFollowSoftmax) {
  Sampler a({1.0f, 0, 1.0f, 9}), b({1.0f, 0, 1.0f, 9});
  std::map<int32_t, int> counts;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const int32_t x = a.sample(kLogits);
    EXPECT_EQ(x, b.sample(kLogits));
    ++counts[x];
  }
  double z = 0;
  for (float l : kLogits) z += std::exp(l);
  for (int32_t id = 0; id < 5; ++id) {
    const double p = std::exp(kLogits[id]) / z;
    EXPECT_NEAR(counts[id] / static_cast<double>(n), p, 4 * std::sqrt(p * (1 - p) / n) + 1e-3) << id;
  }
}

TEST(Sampler, TopKExcludesTheRest) {
  Sampler s({1.0f, 2, 1.0f, 5});
  for (int i = 0; i < 200; ++i) {
    const int32_t x = s.sample(kLogits);
    EXPECT_TRUE(x == 1 || x == 3) << x;
  }
}

TEST(Sampler, RejectsBadOptions) {
  EXPECT_THROW(Sampler({-1.0f, 0, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, -2, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, 0, 0.0f, 0}), Error);
}

}  // namespace
}  // namespace headinfer

namespace headinfer {
namespace {

// The sampler before its top-p fast path: sort the whole vocabulary, softmax in sorted order, cut,
// draw. The fast path sorts only a prefix and sums the normaliser in vocabulary order (a double
// sum of positive terms: the order moves it by ~1e-16 relative), so the draws must be the same.
int32_t reference_top_p(std::span<const float> logits, float temp, float top_p, std::mt19937_64& rng) {
  std::vector<std::pair<float, int32_t>> c;
  for (size_t i = 0; i < logits.size(); ++i) c.emplace_back(logits[i] / temp, static_cast<int32_t>(i));
  std::sort(c.begin(), c.end(), [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
  std::vector<double> p(c.size());
  double total = 0;
  for (size_t i = 0; i < c.size(); ++i) total += p[i] = std::exp(c[i].first - static_cast<double>(c[0].first));
  double mass = 0;
  size_t keep = c.size();
  for (size_t i = 0; i < c.size(); ++i)
    if ((mass += p[i] / total) >= top_p) {
      keep = i + 1;
      break;
    }
  total = 0;
  for (size_t i = 0; i < keep; ++i) total += p[i];
  const double u = std::uniform_real_distribution<double>(0.0, total)(rng);
  double acc = 0;
  for (size_t i = 0; i < keep; ++i)
    if (u < (acc += p[i])) return c[i].second;
  return c[keep - 1].second;
}

TEST(Sampler, TopPFastPathDrawsWhatAFullSortDraws) {
  std::mt19937 gen(7);
  std::vector<float> logits(128256);
  // Peaked (nucleus within 256), broader (within 4096) and flat (the whole vocabulary is sorted).
  for (float spread : {12.0f, 4.0f, 0.5f})
    for (float top_p : {0.5f, 0.9f, 0.99f}) {
      std::normal_distribution<float> d(0.0f, spread);
      for (float& x : logits) x = d(gen);
      Sampler s(SamplerOptions{0.8f, 0, top_p, 11});
      std::mt19937_64 rng(11);
      for (int i = 0; i < 20; ++i)
        ASSERT_EQ(s.sample(logits), reference_top_p(logits, 0.8f, top_p, rng)) << spread << " " << top_p << " " << i;
    }
}

}  // namespace
}  // namespace headinfer
