// Attention on the GPU against the CPU reference, every path: the fp32 CUDA-core kernel (f32 KV,
// short chunks, unaligned rows), cuDNN SDPA (a chunk of queries against 16-bit KV: causal from 0,
// after a past, windows, a diagonal shifted right, no mask), split-KV decode (one query row, every
// head dim and GQA group, windows, empty ranges); parts that start after some queries (lse = -inf).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cuda_test_util.h"

namespace headinfer::test {
namespace {

struct AttnCase {
  int64_t n_queries, n_keys, head_dim, group, q_pos0, k_pos0, window, kv_pad;
  DType kv_dtype;
  float softcap = 0.0f;  // gemma2: cuDNN takes it as a score modifier, decode the CUDA-core kernel
};

void PrintTo(const AttnCase& c, std::ostream* os) {
  *os << "T=" << c.n_queries << " keys=" << c.n_keys << " d=" << c.head_dim << " g=" << c.group
      << " q_pos0=" << c.q_pos0 << " k_pos0=" << c.k_pos0 << " window=" << c.window << " kv=" << dtype_name(c.kv_dtype)
      << " softcap=" << c.softcap;
}

class CudaAttentionTest : public CudaTest, public ::testing::WithParamInterface<AttnCase> {};

// Scores differ by at most ds = scale * (fp32 dot bound of q.k); softmax weights then move by at
// most 2 ds relatively, so the output (a convex combination of V rows) by 2 ds max|v|, plus the
// roundings of exp (a few ulp) and of the two n-term sums. lse moves by ds plus the sum's rounding.
TEST_P(CudaAttentionTest, MatchesCpu) {
  const AttnCase c = GetParam();
  const int64_t d = c.head_dim, g = c.group, T = c.n_queries, n = c.n_keys;
  const int64_t q_cols = g * d, q_stride = q_cols + 8, kv_stride = d + c.kv_pad;
  auto q = random_floats(T * q_stride, -3.0f, 3.0f);
  auto k = random_floats(std::max<int64_t>(n, 1) * kv_stride);
  auto v = random_floats(std::max<int64_t>(n, 1) * kv_stride);
  const auto kbytes = encode(k, c.kv_dtype);  // k, v now hold the values the GPU sees
  const auto vbytes = encode(v, c.kv_dtype);
  auto d_q = upload(q), d_k = upload(kbytes), d_v = upload(vbytes);
  auto d_out = poisoned(T * q_cols), d_lse = poisoned(T * g);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));

  AttentionArgs a;
  a.n_keys = n;
  a.head_dim = d;
  a.n_q_heads = g;
  a.q_pos0 = c.q_pos0;
  a.k_pos0 = c.k_pos0;
  a.window = c.window;
  a.scale = scale;
  a.softcap = c.softcap;
  AttentionArgs ga = a;
  ga.q = view(d_q.data(), T, q_cols, q_stride);
  ga.kv = KvHeadView{d_k.data(), d_v.data(), c.kv_dtype, kv_stride};
  ga.out = view(d_out.data(), T, q_cols, q_cols);
  ga.lse = view(d_lse.data(), T, g, g);
  gpu_->ops().attention(ga);

  std::vector<float> ref_out(T * q_cols), ref_lse(T * g);
  AttentionArgs ca = a;
  ca.q = view(q.data(), T, q_cols, q_stride);
  ca.kv = KvHeadView{k.data(), v.data(), DType::F32, kv_stride};
  ca.out = view(ref_out.data(), T, q_cols, q_cols);
  ca.lse = view(ref_lse.data(), T, g, g);
  cpu_->ops().attention(ca);

  double max_v = 0;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < d; ++i) max_v = std::max(max_v, std::fabs(static_cast<double>(v[j * kv_stride + i])));
  const double sum_round = 2 * kF32Eps * (4 * std::sqrt(static_cast<double>(n)) + 16);
  // A chunk of queries against 16-bit KV may run on the tensor cores (cuDNN): q is rounded to the KV
  // type (each score moves by up to scale * u * sum|q k| more), and the softmax weights (before P V)
  // and the output are rounded to it, u max|v| each. Decode and f32 KV stay fp32 throughout.
  const double u16 = c.kv_dtype != DType::F32 && T > 1 ? unit_roundoff(c.kv_dtype) : 0.0;
  // Soft-capping: tanh's slope is <= 1, so a score error stays <= ds; tanhf and std::tanh differ by
  // a few ulp of the result, <= 4u * softcap after the multiply. The decode kernel caps in base 2
  // (tanh(s2 * cap_inv) * cap_mul, both factors rounded): its argument moves by 3 ulp relatively,
  // which through tanh' = sech^2 (x sech^2 x <= 0.45) and the rounded cap_mul adds < 4u * softcap
  // more, 8u * softcap in all. On the tensor cores the cap is a cuDNN score modifier whose tanh may
  // be the hardware's approximation (PTX tanh.approx.f32: relative error below 2^-10.9),
  // <= 2^-10 * softcap.
  const double tanh_err = (u16 > 0 ? std::ldexp(1.0, -10) : 8 * kF32Eps) * c.softcap;
  std::vector<double> tol_out(ref_out.size()), tol_lse(ref_lse.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < g; ++h) {
      double max_abs_dot = 0;
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t i = 0; i < d; ++i) s += std::fabs(q[t * q_stride + h * d + i] * k[j * kv_stride + i]);
        max_abs_dot = std::max(max_abs_dot, s);
      }
      const double ds = scale * (dot_tolerance(d, max_abs_dot) + u16 * max_abs_dot) + tanh_err;
      for (int64_t i = 0; i < d; ++i)
        tol_out[t * q_cols + h * d + i] = max_v * (2 * ds + 8 * kF32Eps + 2 * sum_round + 2 * u16);
      tol_lse[t * g + h] = ds + sum_round + 4 * kF32Eps * std::fabs(ref_lse[t * g + h]);
    }
  std::ostringstream name;
  PrintTo(c, &name);
  expect_within(download(d_out, ref_out.size()), ref_out, tol_out, "attention out " + name.str());
  expect_within(download(d_lse, ref_lse.size()), ref_lse, tol_lse, "attention lse " + name.str());
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaAttentionTest,
    ::testing::Values(
        // prefill from position 0, every head dim and GQA group
        AttnCase{97, 97, 16, 1, 0, 0, 0, 0, DType::F32}, AttnCase{97, 97, 32, 2, 0, 0, 0, 3, DType::F32},
        AttnCase{97, 97, 64, 4, 0, 0, 0, 0, DType::F32}, AttnCase{97, 97, 128, 4, 0, 0, 0, 0, DType::F32},
        AttnCase{17, 17, 8, 2, 0, 0, 0, 0, DType::F32}, AttnCase{17, 17, 256, 2, 0, 0, 0, 0, DType::F32},
        // a chunk after 1500 past positions, and with a sliding window
        AttnCase{17, 1517, 128, 2, 1500, 0, 0, 0, DType::F32},
        AttnCase{97, 1500, 32, 1, 1403, 0, 200, 0, DType::F32},
        AttnCase{97, 1500, 64, 4, 1403, 0, 1000, 0, DType::BF16},
        // decode: one query against many keys (split-KV), window, 16-bit KV
        AttnCase{1, 1500, 128, 4, 1499, 0, 0, 0, DType::F32}, AttnCase{1, 1500, 64, 1, 1499, 0, 0, 0, DType::F16},
        AttnCase{1, 5000, 128, 8, 4999, 0, 0, 0, DType::BF16}, AttnCase{1, 5000, 64, 2, 4999, 0, 1500, 0, DType::F32},
        // a part that starts after the first queries (they see nothing: lse = -inf, out = 0)
        AttnCase{17, 50, 16, 2, 100, 110, 0, 0, DType::F32},
        // a part that ends before the queries (all keys visible, not the last ones of the context)
        AttnCase{17, 600, 64, 2, 2000, 700, 0, 0, DType::F32}, AttnCase{1, 3000, 128, 4, 9000, 100, 0, 0, DType::F32},
        // cuDNN SDPA (16-bit KV, >= 16 queries): causal from 0, every head dim it takes, f16 too
        AttnCase{97, 97, 128, 4, 0, 0, 0, 0, DType::BF16}, AttnCase{97, 97, 64, 2, 0, 0, 0, 0, DType::F16},
        AttnCase{17, 17, 16, 1, 0, 0, 0, 0, DType::BF16}, AttnCase{33, 33, 256, 2, 0, 0, 0, 0, DType::BF16},
        AttnCase{1500, 1500, 32, 4, 0, 0, 0, 0, DType::BF16},
        // a chunk after a past, a window (diagonal at the last key, and shifted right by 100 with the
        // keys ending before the queries), keys all before the queries (no mask), a right shift alone
        AttnCase{256, 1756, 128, 4, 1500, 0, 0, 0, DType::BF16},
        AttnCase{97, 1400, 128, 2, 1403, 0, 300, 0, DType::BF16},
        AttnCase{64, 600, 128, 4, 2000, 700, 0, 0, DType::BF16}, AttnCase{64, 600, 128, 4, 640, 0, 0, 0, DType::F16},
        // ...that cuDNN declines: unaligned KV rows, queries seeing no key (the CUDA-core kernel runs)
        AttnCase{97, 97, 64, 2, 0, 0, 0, 3, DType::BF16}, AttnCase{17, 50, 16, 2, 100, 110, 0, 0, DType::BF16},
        // split-KV decode: every GQA width (7 takes the 8-wide kernel), head dims 8..256, f32/f16/bf16,
        // one split, 32K keys, a window, a part wholly after the query (empty: lse = -inf)
        AttnCase{1, 32768, 128, 4, 32767, 0, 0, 0, DType::BF16}, AttnCase{1, 5000, 128, 7, 4999, 0, 0, 0, DType::BF16},
        AttnCase{1, 3000, 256, 2, 2999, 0, 0, 0, DType::BF16}, AttnCase{1, 1500, 8, 1, 1499, 0, 0, 0, DType::F32},
        AttnCase{1, 50, 64, 4, 49, 0, 0, 0, DType::BF16}, AttnCase{1, 9000, 64, 4, 8999, 0, 1000, 0, DType::F16},
        AttnCase{1, 3000, 128, 4, 50, 100, 0, 0, DType::BF16},
        // soft-capped scores (gemma2, cap 50 and a biting 2): prefill f32 (CUDA-core) and 16-bit
        // (cuDNN with the cap as a score modifier, its mask inside the modifier): causal from 0, a
        // window, a chunk after a past; decode (split-KV, the cap in base 2), head_dim 256
        AttnCase{97, 97, 64, 2, 0, 0, 0, 0, DType::F32, 50.0f}, AttnCase{97, 97, 32, 4, 0, 0, 0, 0, DType::BF16, 2.0f},
        AttnCase{97, 1500, 256, 2, 1403, 0, 200, 0, DType::BF16, 2.0f},
        AttnCase{64, 600, 256, 2, 640, 0, 0, 0, DType::BF16, 50.0f},
        AttnCase{64, 600, 256, 2, 2000, 700, 0, 0, DType::BF16, 50.0f},
        AttnCase{1, 5000, 256, 2, 4999, 0, 0, 0, DType::BF16, 50.0f},
        AttnCase{1, 1500, 16, 2, 1499, 0, 48, 0, DType::F32, 2.0f},
        AttnCase{1, 32768, 256, 2, 32767, 0, 0, 0, DType::BF16, 50.0f},
        AttnCase{1, 9000, 256, 2, 8999, 0, 4096, 0, DType::BF16, 2.0f}));


// One call for a group of kv heads (what a resident or streamed group issues) gives each head
// exactly what a call for that head alone gives: every placement's logits rest on this. Covers
// decode (split-KV), cuDNN prefill (16-bit KV) and the CUDA-core kernel (f32 KV).
struct GroupCase {
  int64_t n_queries, n_keys, q_pos0, n_kv_heads;
  DType kv_dtype;
};

class CudaGroupedAttentionTest : public CudaTest, public ::testing::WithParamInterface<GroupCase> {};

// The shape of a case's call: n_kv_heads heads of head_dim d and gs query heads each, head blocks of
// `capacity` rows back to back. Views (q, kv, out, lse) are the test's.
AttentionArgs group_args(const GroupCase& c, int64_t d, int64_t gs, int64_t capacity) {
  AttentionArgs a;
  a.n_keys = c.n_keys;
  a.head_dim = d;
  a.n_q_heads = gs;
  a.n_kv_heads = c.n_kv_heads;
  a.kv_head_stride = capacity * d;
  a.q_pos0 = c.q_pos0;
  a.scale = 0.088f;
  return a;
}

TEST_P(CudaGroupedAttentionTest, EqualsOneCallPerHead) {
  const GroupCase c = GetParam();
  const int64_t d = 128, gs = 4, H = c.n_kv_heads, T = c.n_queries, n = c.n_keys;
  const int64_t capacity = n + 40;  // head blocks [capacity, d], H of them back to back
  const int64_t q_cols = H * gs * d;
  auto q = random_floats(T * q_cols, -3.0f, 3.0f);
  auto k = random_floats(H * capacity * d), v = random_floats(H * capacity * d);
  auto d_q = upload(q), d_k = upload(encode(k, c.kv_dtype)), d_v = upload(encode(v, c.kv_dtype));
  auto grouped_out = poisoned(T * q_cols), grouped_lse = poisoned(T * H * gs);
  auto single_out = poisoned(T * q_cols), single_lse = poisoned(T * H * gs);
  AttentionArgs a = group_args(c, d, gs, capacity);
  a.q = view(d_q.data(), T, q_cols, q_cols);
  a.kv = KvHeadView{d_k.data(), d_v.data(), c.kv_dtype, d};
  a.out = view(grouped_out.data(), T, q_cols, q_cols);
  a.lse = view(grouped_lse.data(), T, H * gs, H * gs);
  gpu_->ops().attention(a);
  AttentionArgs b = a;
  b.out = view(single_out.data(), T, q_cols, q_cols);
  b.lse = view(single_lse.data(), T, H * gs, H * gs);
  for (int64_t i = 0; i < H; ++i) gpu_->ops().attention(b.head(i));
  const auto go = download(grouped_out, T * q_cols), so = download(single_out, T * q_cols);
  const auto gl = download(grouped_lse, T * H * gs), sl = download(single_lse, T * H * gs);
  EXPECT_EQ(0, std::memcmp(go.data(), so.data(), go.size() * sizeof(float))) << "out differs";
  EXPECT_EQ(0, std::memcmp(gl.data(), sl.data(), gl.size() * sizeof(float))) << "lse differs";
  EXPECT_FALSE(std::isnan(go[0])) << "the output was never written";
}

// A 16-bit output (AttentionArgs::out16, a column block of a wider matrix as the model's o_proj
// input is): one call for the group gives each head the bits of a call for that head alone, and
// those are the F32 output rounded, within one 16-bit ulp (cuDNN may run another engine for the
// graph that writes O there; its fp32 softmax sums then round differently), and exactly where the
// call takes a path that rounds the F32 output (few queries, f32 KV).
TEST_P(CudaGroupedAttentionTest, SixteenBitOutIsTheF32OutRounded) {
  const GroupCase c = GetParam();
  if (c.n_queries < 2) GTEST_SKIP() << "decode writes F32 (the model asks for out16 on chunks only)";
  const int64_t d = 128, gs = 4, H = c.n_kv_heads, T = c.n_queries, n = c.n_keys;
  const int64_t capacity = n + 40, q_cols = H * gs * d, ld16 = q_cols + 3 * d;
  const DType t16 = c.kv_dtype == DType::F32 ? DType::BF16 : c.kv_dtype;
  auto q = random_floats(T * q_cols, -3.0f, 3.0f);
  auto k = random_floats(H * capacity * d), v = random_floats(H * capacity * d);
  auto d_q = upload(q), d_k = upload(encode(k, c.kv_dtype)), d_v = upload(encode(v, c.kv_dtype));
  auto out = poisoned(T * q_cols), lse = poisoned(T * H * gs), scratch = poisoned(T * q_cols);
  AttentionArgs a = group_args(c, d, gs, capacity);
  a.q = view(d_q.data(), T, q_cols, q_cols);
  a.kv = KvHeadView{d_k.data(), d_v.data(), c.kv_dtype, d};
  a.out = view(out.data(), T, q_cols, q_cols);
  a.lse = view(lse.data(), T, H * gs, H * gs);
  gpu_->ops().attention(a);  // the F32 reference
  const auto ref_lse = download(lse, T * H * gs);
  auto widened = [&](const DeviceBuffer& b) {  // columns [d, d + q_cols) of [T, ld16] 16-bit, as F32
    auto w = poisoned(T * q_cols);
    gpu_->ops().copy(MatView{static_cast<char*>(b.data()) + d * 2, t16, T, q_cols, ld16}, view(w.data(), T, q_cols, q_cols));
    return download(w, T * q_cols);
  };
  DeviceBuffer grouped16(*gpu_, T * ld16 * 2, "out16"), single16(*gpu_, T * ld16 * 2, "out16");
  AttentionArgs b = a;
  b.out = view(scratch.data(), T, q_cols, q_cols);
  b.out16 = MatView{static_cast<char*>(grouped16.data()) + d * 2, t16, T, q_cols, ld16};
  auto lse16 = poisoned(T * H * gs);
  b.lse = view(lse16.data(), T, H * gs, H * gs);
  gpu_->ops().attention(b);
  // The lse of the 16-bit call: cuDNN's Stats moved alone, or the F32 path's.
  expect_within(download(lse16, T * H * gs), ref_lse, 1e-6, 1e-6, "lse of the 16-bit call");
  AttentionArgs h = b;
  h.out16 = MatView{static_cast<char*>(single16.data()) + d * 2, t16, T, q_cols, ld16};
  for (int64_t i = 0; i < H; ++i) gpu_->ops().attention(h.head(i));
  const auto ref = download(out, T * q_cols), g16 = widened(grouped16), s16 = widened(single16);
  EXPECT_EQ(0, std::memcmp(g16.data(), s16.data(), g16.size() * sizeof(float))) << "grouped out16 differs from per head";
  const bool rounds_f32 = c.kv_dtype == DType::F32;  // the CUDA-core kernel's F32 out, then copy()
  // Rounding alone: within u |x|. Another engine's fp32 sums first: a few fp32 ulps of the output's
  // scale (values of v in [-1, 1]), then up to one 16-bit ulp (2u |x|) more.
  expect_within(g16, ref, rounds_f32 ? 0.0 : 1e-6, rounds_f32 ? unit_roundoff(t16) : 4 * unit_roundoff(t16),
                std::string("out16 against the F32 out, ") + std::string(dtype_name(c.kv_dtype)) + " T=" +
                    std::to_string(T));
}

// The decode kernel copies settled keys before the op ahead of it has finished
// (AttentionArgs::settled_keys), as store_and_attend_heads calls it: copy_heads_kv writes the step's
// row over a stale one, then the attention runs with every earlier row settled. It gives the bits of
// a call with nothing settled on the same keys uploaded whole, and so does a call with every key
// settled (every stage copied early). A stage counted wrong, or the new row read early, shows here.
TEST_P(CudaGroupedAttentionTest, SettledKeysChangeNoBit) {
  const GroupCase c = GetParam();
  if (c.n_queries != 1) GTEST_SKIP() << "settled_keys concerns the one-row (decode) kernel";
  const int64_t d = 128, gs = 4, H = c.n_kv_heads, n = c.n_keys, last = c.q_pos0;
  const int64_t capacity = n + 40, q_cols = H * gs * d;
  auto q = random_floats(q_cols, -3.0f, 3.0f);
  auto k = random_floats(H * capacity * d), v = random_floats(H * capacity * d);
  auto k_new = random_floats(H * d), v_new = random_floats(H * d);
  auto stale_k = k, stale_v = v;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < d; ++i) {
      const size_t at = static_cast<size_t>((h * capacity + last) * d + i);
      k[at] = k_new[static_cast<size_t>(h * d + i)];
      v[at] = v_new[static_cast<size_t>(h * d + i)];
      stale_k[at] = 100.0f;  // a row the early copies must not take
      stale_v[at] = -100.0f;
    }
  auto d_q = upload(q), d_k = upload(encode(k, c.kv_dtype)), d_v = upload(encode(v, c.kv_dtype));
  auto d_sk = upload(encode(stale_k, c.kv_dtype)), d_sv = upload(encode(stale_v, c.kv_dtype));
  auto d_kn = upload(k_new), d_vn = upload(v_new);
  AttentionArgs a = group_args(c, d, gs, capacity);
  a.layer_kv_heads = H;
  a.q = view(d_q.data(), 1, q_cols, q_cols);
  auto run = [&](const DeviceBuffer& kb, const DeviceBuffer& vb, int64_t settled, bool copy_first) {
    auto out = poisoned(q_cols), lse = poisoned(H * gs);
    if (copy_first) {
      const size_t row = static_cast<size_t>(last * d) * dtype_size(c.kv_dtype);
      gpu_->ops().copy_heads_kv(view(d_kn.data(), 1, H * d, H * d), view(d_vn.data(), 1, H * d, H * d), H,
                                MatView{static_cast<char*>(kb.data()) + row, c.kv_dtype, 1, d, d},
                                MatView{static_cast<char*>(vb.data()) + row, c.kv_dtype, 1, d, d}, capacity * d);
    }
    AttentionArgs b = a;
    b.kv = KvHeadView{kb.data(), vb.data(), c.kv_dtype, d};
    b.settled_keys = settled;
    b.out = view(out.data(), 1, q_cols, q_cols);
    b.lse = view(lse.data(), 1, H * gs, H * gs);
    gpu_->ops().attention(b);
    auto o = download(out, q_cols), l = download(lse, H * gs);
    o.insert(o.end(), l.begin(), l.end());
    return o;
  };
  const auto ref = run(d_k, d_v, 0, false);
  const auto all_settled = run(d_k, d_v, n, false);
  const auto stepped = run(d_sk, d_sv, last, true);
  EXPECT_FALSE(std::isnan(ref[0])) << "the output was never written";
  EXPECT_EQ(0, std::memcmp(ref.data(), all_settled.data(), ref.size() * sizeof(float))) << "all keys settled differs";
  EXPECT_EQ(0, std::memcmp(ref.data(), stepped.data(), ref.size() * sizeof(float))) << "copy, then settled keys differs";
}

INSTANTIATE_TEST_SUITE_P(Groups, CudaGroupedAttentionTest,
                         ::testing::Values(GroupCase{1, 8192, 8191, 8, DType::BF16}, GroupCase{1, 37, 36, 2, DType::BF16},
                                           GroupCase{1, 3000, 2999, 4, DType::F32},
                                           GroupCase{512, 4096, 3584, 8, DType::BF16},
                                           GroupCase{97, 97, 0, 2, DType::F16}, GroupCase{33, 1000, 967, 2, DType::F32},
                                           GroupCase{9, 200, 191, 2, DType::BF16}));

// copy_heads equals one copy per head.
TEST_F(CudaTest, CopyHeadsEqualsOneCopyPerHead) {
  const int64_t rows = 5, d = 64, H = 3, stride = 1000;
  auto src = random_floats(rows * H * d);
  auto d_src = upload(src);
  std::vector<uint16_t> zero(static_cast<size_t>(H * stride + rows * d), 0);
  auto a = upload(zero), b = upload(zero);
  const MatView s = view(d_src.data(), rows, H * d, H * d);
  gpu_->ops().copy_heads(s, H, MatView{a.data(), DType::BF16, rows, d, d}, stride);
  for (int64_t i = 0; i < H; ++i)
    gpu_->ops().copy(s.slice_cols(i * d, d), MatView{static_cast<uint16_t*>(b.data()) + i * stride, DType::BF16, rows, d, d});
  std::vector<uint16_t> ha(zero.size()), hb(zero.size());
  gpu_->read_to_host(ha.data(), a.data(), ha.size() * 2);
  gpu_->read_to_host(hb.data(), b.data(), hb.size() * 2);
  EXPECT_EQ(ha, hb);
  EXPECT_NE(ha[static_cast<size_t>(2 * stride)], 0);
}

}  // namespace
}  // namespace headinfer::test
