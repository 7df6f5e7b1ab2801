// CPU reference ops against straightforward double-precision formulas, on awkward sizes with
// fresh random inputs. Tolerances: fp32 reductions of length K carry ~K u relative error in the
// worst case (u = 2^-24); the bounds below are a few times that for the sizes used.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "headinfer/backend.h"
#include "headinfer/dtype.h"
#include "headinfer/error.h"

namespace headinfer {
namespace {

std::vector<float> random_vec(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

MatView view(std::vector<float>& v, int64_t rows, int64_t cols) { return {v.data(), DType::F32, rows, cols, cols}; }

TEST(CpuOps, LinearWithEveryWeightDtype) {
  std::mt19937 rng(1);
  auto dev = make_cpu_device({2, 0});
  const int64_t T = 17, in = 97, out = 33;
  auto x = random_vec(T * in, rng);
  auto w = random_vec(out * in, rng);
  auto b = random_vec(out, rng);
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    std::vector<uint8_t> wbytes(w.size() * dtype_size(dt));
    std::vector<float> wq(w.size());  // the weights as stored, widened back
    for (size_t i = 0; i < w.size(); ++i) {
      if (dt == DType::F32) {
        std::memcpy(wbytes.data() + 4 * i, &w[i], 4);
        wq[i] = w[i];
      } else {
        const uint16_t h = dt == DType::BF16 ? f32_to_bf16(w[i]) : f32_to_f16(w[i]);
        std::memcpy(wbytes.data() + 2 * i, &h, 2);
        wq[i] = dt == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
      }
    }
    std::vector<float> y(T * out);
    VecView bias{b.data(), DType::F32, out};
    dev->ops().linear(view(x, T, in), WeightView{wbytes.data(), dt, out, in}, &bias, view(y, T, out));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < out; ++j) {
        double ref = b[j], mag = std::fabs(b[j]);
        for (int64_t k = 0; k < in; ++k) {
          ref += static_cast<double>(x[t * in + k]) * wq[j * in + k];
          mag += std::fabs(static_cast<double>(x[t * in + k]) * wq[j * in + k]);
        }
        EXPECT_NEAR(y[t * out + j], ref, 1e-6 + in * 6e-8 * mag) << t << "," << j;
      }
  }
}

// The device argmax follows the host sampler's rule: first largest, NaN never wins unless first.
TEST(CpuOps, ArgmaxIsTheSamplersRule) {
  auto dev = make_cpu_device({1, 0});
  const float nan = std::nanf("");
  auto run = [&](std::vector<float> v) {
    int32_t out = -1;
    dev->ops().argmax(view(v, 1, static_cast<int64_t>(v.size())), &out);
    return out;
  };
  EXPECT_EQ(run({1, 3, 2, 3}), 1);
  EXPECT_EQ(run({-INFINITY, -INFINITY}), 0);
  EXPECT_EQ(run({0.0f, nan, 5.0f, 5.0f}), 2);
  EXPECT_EQ(run({nan, 7.0f, 9.0f}), 0);
  EXPECT_EQ(run({-0.0f, 0.0f}), 0);
}

TEST(CpuOps, RmsNorm) {
  std::mt19937 rng(2);
  auto dev = make_cpu_device({2, 0});
  const int64_t T = 7, n = 97;
  auto x = random_vec(T * n, rng, 3.0f);
  auto w = random_vec(n, rng);
  std::vector<float> y(T * n);
  dev->ops().rms_norm(view(x, T, n), VecView{w.data(), DType::F32, n}, 1e-5f, view(y, T, n));
  for (int64_t t = 0; t < T; ++t) {
    double ms = 0;
    for (int64_t i = 0; i < n; ++i) ms += static_cast<double>(x[t * n + i]) * x[t * n + i];
    const double inv = 1.0 / std::sqrt(ms / n + 1e-5);
    for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y[t * n + i], w[i] * x[t * n + i] * inv, 1e-5 * (1 + std::fabs(w[i] * x[t * n + i] * inv)));
  }
}

TEST(CpuOps, RopeRotatesPairsAndKeepsNorms) {
  std::mt19937 rng(3);
  auto dev = make_cpu_device({2, 0});
  const int64_t T = 5, heads = 3, d = 16;
  auto x = random_vec(T * heads * d, rng);
  auto orig = x;
  std::vector<float> inv_freq(d / 2);
  for (int64_t i = 0; i < d / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / d);
  dev->ops().rope(view(x, T, heads * d), heads, RopeTable{inv_freq.data(), d, 1.0f}, 1000);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < d / 2; ++i) {
        const double a = static_cast<double>(static_cast<float>(inv_freq[i] * static_cast<float>(1000 + t)));
        const float* o = &orig[(t * heads + h) * d];
        const float* r = &x[(t * heads + h) * d];
        EXPECT_NEAR(r[i], o[i] * std::cos(a) - o[i + d / 2] * std::sin(a), 1e-5);
        EXPECT_NEAR(r[i + d / 2], o[i + d / 2] * std::cos(a) + o[i] * std::sin(a), 1e-5);
      }
}

struct AttnCase {
  int64_t n_queries, n_keys, d, n_q_heads, window, q_pos0;
};

class CpuAttention : public ::testing::TestWithParam<AttnCase> {};

// Reference in double: softmax over visible keys, out and log-sum-exp.
TEST_P(CpuAttention, MatchesReferenceAndMergesExactlyFromParts) {
  const AttnCase c = GetParam();
  std::mt19937 rng(static_cast<unsigned>(c.n_keys * 31 + c.d));
  auto dev = make_cpu_device({2, 0});
  auto q = random_vec(c.n_queries * c.n_q_heads * c.d, rng);
  auto k = random_vec(c.n_keys * c.d, rng);
  auto v = random_vec(c.n_keys * c.d, rng);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
  std::vector<float> out(q.size()), lse(c.n_queries * c.n_q_heads);
  AttentionArgs a;
  a.q = view(q, c.n_queries, c.n_q_heads * c.d);
  a.kv = KvHeadView{k.data(), v.data(), DType::F32, c.d};
  a.n_keys = c.n_keys;
  a.head_dim = c.d;
  a.n_q_heads = c.n_q_heads;
  a.q_pos0 = c.q_pos0;
  a.window = c.window;
  a.scale = scale;
  a.out = view(out, c.n_queries, c.n_q_heads * c.d);
  a.lse = view(lse, c.n_queries, c.n_q_heads);
  dev->ops().attention(a);
  for (int64_t t = 0; t < c.n_queries; ++t)
    for (int64_t h = 0; h < c.n_q_heads; ++h) {
      const int64_t pos = c.q_pos0 + t;
      std::vector<double> s;
      std::vector<int64_t> js;
      for (int64_t j = 0; j < c.n_keys; ++j) {
        if (j > pos || (c.window > 0 && pos - j >= c.window)) continue;
        double dot = 0;
        for (int64_t i = 0; i < c.d; ++i) dot += static_cast<double>(q[(t * c.n_q_heads + h) * c.d + i]) * k[j * c.d + i];
        s.push_back(dot * scale);
        js.push_back(j);
      }
      double m = -INFINITY, sum = 0;
      for (double x : s) m = std::max(m, x);
      for (double x : s) sum += std::exp(x - m);
      EXPECT_NEAR(lse[t * c.n_q_heads + h], m + std::log(sum), 1e-5 * (1 + std::fabs(m)));
      for (int64_t i = 0; i < c.d; ++i) {
        double o = 0;
        for (size_t n = 0; n < s.size(); ++n) o += std::exp(s[n] - m) / sum * v[js[n] * c.d + i];
        EXPECT_NEAR(out[(t * c.n_q_heads + h) * c.d + i], o, 2e-5);
      }
    }

  // The same attention as two parts (keys [0, split) and [split, n)), merged by log-sum-exp.
  const int64_t split = c.n_keys / 3;
  std::vector<float> out_b(q.size()), lse_b(lse.size()), out_a(q.size()), lse_a(lse.size());
  AttentionArgs pa = a, pb = a;
  pa.n_keys = split;
  pa.out = view(out_a, c.n_queries, c.n_q_heads * c.d);
  pa.lse = view(lse_a, c.n_queries, c.n_q_heads);
  pb.kv = KvHeadView{k.data() + split * c.d, v.data() + split * c.d, DType::F32, c.d};
  pb.n_keys = c.n_keys - split;
  pb.k_pos0 = split;
  pb.out = view(out_b, c.n_queries, c.n_q_heads * c.d);
  pb.lse = view(lse_b, c.n_queries, c.n_q_heads);
  dev->ops().attention(pa);
  dev->ops().attention(pb);
  dev->ops().attention_merge(pa.out, pa.lse, pb.out, pb.lse, c.d);
  // Merging rescales by exp(lse_part - lse): a few fp32 roundings on top of each part's.
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out_a[i], out[i], 1e-5 * (1 + std::fabs(out[i])));
  for (size_t i = 0; i < lse.size(); ++i) EXPECT_NEAR(lse_a[i], lse[i], 1e-5 * (1 + std::fabs(lse[i])));
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, CpuAttention,
                         ::testing::Values(AttnCase{1, 1, 16, 1, 0, 0}, AttnCase{7, 17, 16, 2, 0, 10},
                                           AttnCase{17, 97, 32, 4, 0, 80}, AttnCase{13, 97, 64, 1, 48, 84},
                                           AttnCase{1, 1500, 128, 4, 0, 1499}, AttnCase{3, 1500, 16, 2, 48, 1497}));

// A BF16/F16 KV store (hybrid decode's home blocks): Ops::copy narrows as f32_to_bf16/f16 do, and
// attention over the narrow store is bit-identical to attention over an F32 store holding the
// widened values (each row is widened before use, so every sum runs in the same order).
TEST(CpuOps, NarrowKvStoreMatchesWidenedF32Bitwise) {
  std::mt19937 rng(97);
  auto dev = make_cpu_device({2, 0});
  const int64_t n_keys = 97, d = 48, gs = 3;
  for (DType kv : {DType::BF16, DType::F16}) {
    SCOPED_TRACE(std::string(dtype_name(kv)));
    // F32 activations [n_keys, 2 * d] (K columns then V, as k_new/v_new are strided views).
    auto act = random_vec(static_cast<size_t>(n_keys * 2 * d), rng);
    std::vector<uint16_t> k16(static_cast<size_t>(n_keys * d)), v16(k16.size());
    const MatView src{act.data(), DType::F32, n_keys, 2 * d, 2 * d};
    dev->ops().copy(src.slice_cols(0, d), MatView{k16.data(), kv, n_keys, d, d});
    dev->ops().copy(src.slice_cols(d, d), MatView{v16.data(), kv, n_keys, d, d});
    std::vector<float> k32(k16.size()), v32(v16.size());
    for (int64_t j = 0; j < n_keys; ++j)
      for (int64_t i = 0; i < d; ++i) {
        const float x = act[static_cast<size_t>(j * 2 * d + i)], y = act[static_cast<size_t>(j * 2 * d + d + i)];
        const size_t at = static_cast<size_t>(j * d + i);
        ASSERT_EQ(k16[at], kv == DType::BF16 ? f32_to_bf16(x) : f32_to_f16(x));
        ASSERT_EQ(v16[at], kv == DType::BF16 ? f32_to_bf16(y) : f32_to_f16(y));
      }
    convert_to_f32(kv, k16.data(), k32.data(), k32.size());
    convert_to_f32(kv, v16.data(), v32.data(), v32.size());
    auto q = random_vec(static_cast<size_t>(5 * gs * d), rng);
    std::vector<float> out_n(q.size()), out_w(q.size()), lse_n(5 * gs), lse_w(5 * gs);
    AttentionArgs a;
    a.q = view(q, 5, gs * d);
    a.n_keys = n_keys;
    a.head_dim = d;
    a.n_q_heads = gs;
    a.q_pos0 = n_keys - 5;
    a.scale = 1.0f / std::sqrt(static_cast<float>(d));
    AttentionArgs w = a;
    a.kv = KvHeadView{k16.data(), v16.data(), kv, d};
    a.out = view(out_n, 5, gs * d);
    a.lse = view(lse_n, 5, gs);
    w.kv = KvHeadView{k32.data(), v32.data(), DType::F32, d};
    w.out = view(out_w, 5, gs * d);
    w.lse = view(lse_w, 5, gs);
    dev->ops().attention(a);
    dev->ops().attention(w);
    EXPECT_EQ(0, std::memcmp(out_n.data(), out_w.data(), out_n.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(lse_n.data(), lse_w.data(), lse_n.size() * sizeof(float)));
  }
}

TEST(Dtype, HalfConversionsRoundToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);                // rounds to infinity
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);   // tie to even: 0
  for (uint32_t h = 0; h < 0x7c00; ++h) EXPECT_EQ(f32_to_f16(f16_to_f32(static_cast<uint16_t>(h))), h);
  for (uint32_t h = 0; h < 0x7f80; h += 7) EXPECT_EQ(f32_to_bf16(bf16_to_f32(static_cast<uint16_t>(h))), h);
}

TEST(CpuDevice, BudgetIsEnforcedAndPeakTracked) {
  auto dev = make_cpu_device({1, 1000});
  {
    DeviceBuffer a(*dev, 600, "a");
    EXPECT_THROW(DeviceBuffer(*dev, 500, "b"), Error);
    EXPECT_EQ(dev->bytes_in_use(), 600u);
  }
  DeviceBuffer c(*dev, 900, "c");
  EXPECT_EQ(dev->peak_bytes(), 900u);
}

}  // namespace
}  // namespace headinfer
