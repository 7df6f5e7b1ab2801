#include <gtest/gtest.h>

#include <map>

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
