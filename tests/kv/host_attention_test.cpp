// Host attention kernel against a double-precision reference: every ISA path this CPU runs, KV in
// F32, BF16 and F16, awkward lengths, head dims 64 and 128 (register-resident accumulators) and
// 8, 16, 40 (the padded generic path), GQA groups 1, 4 and 8, decode and multi-query chunks,
// sliding windows and parts that a query does not see, K/V in one run or in pages (slabs) of
// awkward sizes. Then its KV read rate in GB/s: a quick probe here, the full per-ISA report in
// DISABLED_KvReadBandwidthReport (benchmark mode).
//
// Tolerance, from the kernel's arithmetic (u = 2^-24, gamma_n = n u / (1 - n u)):
//  - score s_j = fl(fl(q . k_j) * scale): |ds_j| <= scale * gamma_d * sum_i |q_i k_ji| + u |s_j|
//    (K and V are exact after widening; the reference reads the same widened values). The bound
//    holds for any order of the d products, so lane partials, the transposing reduction of a
//    block of keys and the even/odd dim order of the bf16 path all fall under it.
//  - p_j = exp(s_j - m): relative error eps_p <= 2 max|ds| + u max|s_j - m| + 6u (the polynomial
//    exp is within 2 ulp; the split merge weights e^(m_s - M) add the same once more). Below
//    exp(-87.3) = 1.2e-38 the kernel returns 0; next to the 1 of the maximum that is far under u.
//  - l = sum p_j and acc = sum p_j v_j are summed in a known depth: each tile's sums start from
//    zero and take at most kTileKeys (32) adds, then one fused rescale-and-add per tile of a split
//    (state * alpha + tile sum), one per split in the merge:
//    D = 32 + ceil(split_len / 32) + n_splits + 2, error gamma_D relative to sum p_j |v_j|.
//    Paged K/V (the host tier's slabs) add a cut at each page boundary inside the head's run of
//    keys: up to pages - 1 more splits, none longer than before, still one merge.
//  - out = acc / l: |d out_c| <= (2 eps_p + 2 gamma_D + 2u) * A_c,  A_c = sum p_j |v_jc| / sum p_j
//  - lse = m + log l: |d lse| <= max|ds| + eps_p + gamma_D + u |lse|.
// A dropped or extra key moves out_c by about p_j |v_jc - out_c|, far above these bounds, so the
// check sees masking and split bugs at every length tested.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "headinfer/error.h"
#include "headinfer/host_attention.h"

namespace headinfer {
namespace {

constexpr double kU = 1.0 / 16777216.0;  // 2^-24: fp32 unit roundoff
double gamma_n(double n) { return n * kU / (1.0 - n * kU); }

std::vector<HostIsa> isas_here() {
  std::vector<HostIsa> out;
  for (HostIsa i : {HostIsa::Scalar, HostIsa::Avx2, HostIsa::Avx512})
    if (host_isa_supported(i)) out.push_back(i);
  return out;
}

// One kv head's data: K, V [n_keys][d] stored in `dtype`, and the same values widened (exact).
struct KvData {
  std::vector<uint8_t> k, v;   // dtype [n_keys][d], row stride d
  std::vector<double> kd, vd;  // [n_keys][d]: the stored values
};

KvData make_kv(DType dtype, int64_t n_keys, int64_t d, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  const auto elem = static_cast<int64_t>(dtype_size(dtype));
  KvData kv;
  kv.k.resize(static_cast<size_t>(n_keys * d * elem));
  kv.v.resize(kv.k.size());
  kv.kd.resize(static_cast<size_t>(n_keys * d));
  kv.vd.resize(kv.kd.size());
  auto put = [&](std::vector<uint8_t>& raw, std::vector<double>& wide, int64_t i) {
    const float x = dist(rng);
    if (dtype == DType::F32) {
      std::memcpy(raw.data() + i * 4, &x, 4);
      wide[static_cast<size_t>(i)] = x;
    } else {
      const uint16_t h = dtype == DType::BF16 ? f32_to_bf16(x) : f32_to_f16(x);
      std::memcpy(raw.data() + i * 2, &h, 2);
      wide[static_cast<size_t>(i)] = dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
  };
  for (int64_t i = 0; i < n_keys * d; ++i) {
    put(kv.k, kv.kd, i);
    put(kv.v, kv.vd, i);
  }
  return kv;
}

struct Case {
  DType dtype = DType::F32;
  int64_t n_keys = 1;
  int64_t head_dim = 64;
  int64_t n_q_heads = 1;
  int64_t n_queries = 1;
  int64_t q_pos0 = 0;   // default: bottom-right aligned (n_keys - n_queries)
  int64_t k_pos0 = 0;
  int64_t window = 0;
  float scale_boost = 1.0f;  // > 1: peakier softmax
  bool aligned = true;
  int64_t page_rows = 0;     // > 0: K/V handed over in separate pages of this many keys
};

// A head's K or V cut into pages of page_rows keys, each its own allocation (a read past a page
// end reads another buffer's bytes, not the next key), and the page table the kernel takes.
struct Pages {
  std::vector<std::vector<uint8_t>> k, v;
  std::vector<const void*> k_ptr, v_ptr;
};

Pages make_pages(const KvData& kv, int64_t n_keys, int64_t row_bytes, int64_t page_rows) {
  Pages p;
  for (int64_t first = 0; first < n_keys; first += page_rows) {
    const int64_t rows = std::min(page_rows, n_keys - first);
    const auto b = static_cast<size_t>(first * row_bytes), e = static_cast<size_t>((first + rows) * row_bytes);
    p.k.emplace_back(kv.k.begin() + static_cast<ptrdiff_t>(b), kv.k.begin() + static_cast<ptrdiff_t>(e));
    p.v.emplace_back(kv.v.begin() + static_cast<ptrdiff_t>(b), kv.v.begin() + static_cast<ptrdiff_t>(e));
  }
  for (size_t i = 0; i < p.k.size(); ++i) {
    p.k_ptr.push_back(p.k[i].data());
    p.v_ptr.push_back(p.v[i].data());
  }
  return p;
}

std::string describe(const Case& c, HostIsa isa) {
  return std::string(host_isa_name(isa)) + " " + std::string(dtype_name(c.dtype)) + " keys " +
         std::to_string(c.n_keys) + " d " + std::to_string(c.head_dim) + " gqa " + std::to_string(c.n_q_heads) +
         " queries " + std::to_string(c.n_queries) + " q_pos0 " + std::to_string(c.q_pos0) + " k_pos0 " +
         std::to_string(c.k_pos0) + " window " + std::to_string(c.window) + " pages " + std::to_string(c.page_rows);
}

// Runs `c` with two kv heads in one call and checks every output and LSE against the reference.
void check_case(HostAttention& attn, Case c, uint32_t seed) {
  if (c.aligned) c.q_pos0 = c.k_pos0 + c.n_keys - c.n_queries;
  const HostIsa isa = attn.isa();
  SCOPED_TRACE(describe(c, isa));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  const int64_t d = c.head_dim, nq = c.n_q_heads, T = c.n_queries, cols = nq * d;
  const float scale = c.scale_boost / std::sqrt(static_cast<float>(d));
  constexpr int kHeads = 2;
  std::vector<KvData> kv;
  std::vector<std::vector<float>> q(kHeads), out(kHeads), lse(kHeads);  // F32 [T][cols], [T][cols], [T][nq]
  std::vector<AttentionArgs> args(kHeads);
  std::vector<Pages> pages;  // page_views point into these
  std::vector<HostKvPages> page_views;
  pages.reserve(kHeads);
  for (int i = 0; i < kHeads; ++i) {
    kv.push_back(make_kv(c.dtype, c.n_keys, d, rng));
    if (c.page_rows > 0) {
      pages.push_back(make_pages(kv.back(), c.n_keys, d * static_cast<int64_t>(dtype_size(c.dtype)), c.page_rows));
      page_views.push_back(HostKvPages{pages.back().k_ptr.data(), pages.back().v_ptr.data(), c.page_rows});
    }
    q[i].resize(static_cast<size_t>(T * cols));
    for (float& x : q[i]) x = dist(rng);
    out[i].assign(q[i].size(), std::numeric_limits<float>::quiet_NaN());
    lse[i].assign(static_cast<size_t>(T * nq), std::numeric_limits<float>::quiet_NaN());
    AttentionArgs& a = args[static_cast<size_t>(i)];
    a.q = MatView{q[i].data(), DType::F32, T, cols, cols};
    a.kv = c.page_rows > 0 ? KvHeadView{nullptr, nullptr, c.dtype, d}  // paged: page_views
                           : KvHeadView{kv[i].k.data(), kv[i].v.data(), c.dtype, d};
    a.n_keys = c.n_keys;
    a.head_dim = d;
    a.n_q_heads = nq;
    a.q_pos0 = c.q_pos0;
    a.k_pos0 = c.k_pos0;
    a.window = c.window;
    a.scale = scale;
    a.out = MatView{out[i].data(), DType::F32, T, cols, cols};
    a.lse = MatView{lse[i].data(), DType::F32, T, nq, nq};
  }
  attn.run(args, page_views);

  int failures = 0;
  for (int i = 0; i < kHeads && failures < 5; ++i)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < nq; ++h) {
        const int64_t q_pos = c.q_pos0 + t;
        const int64_t j1 = std::min(c.n_keys, q_pos - c.k_pos0 + 1);
        const int64_t j0 = c.window > 0 ? std::max<int64_t>(0, q_pos - c.window + 1 - c.k_pos0) : 0;
        const float* o = out[i].data() + t * cols + h * d;
        const float got_lse = lse[i][static_cast<size_t>(t * nq + h)];
        if (j1 <= j0) {
          EXPECT_TRUE(std::isinf(got_lse) && got_lse < 0) << "a query that sees no key has lse -inf";
          for (int64_t x = 0; x < d; ++x) EXPECT_EQ(o[x], 0.0f);
          continue;
        }
        const float* qv = q[i].data() + t * cols + h * d;
        std::vector<double> s(static_cast<size_t>(j1 - j0)), abs_dot(s.size());
        double m = -std::numeric_limits<double>::infinity(), ds_max = 0.0;
        for (int64_t j = j0; j < j1; ++j) {
          double dot = 0.0, mag = 0.0;
          for (int64_t x = 0; x < d; ++x) {
            const double p = static_cast<double>(qv[x]) * kv[i].kd[static_cast<size_t>(j * d + x)];
            dot += p;
            mag += std::abs(p);
          }
          const double sj = dot * static_cast<double>(scale);
          s[static_cast<size_t>(j - j0)] = sj;
          m = std::max(m, sj);
          ds_max = std::max(ds_max, static_cast<double>(scale) * gamma_n(static_cast<double>(d)) * mag + kU * std::abs(sj));
        }
        double l = 0.0, spread = 0.0;
        std::vector<double> ref(static_cast<size_t>(d), 0.0), mass(static_cast<size_t>(d), 0.0);
        for (int64_t j = j0; j < j1; ++j) {
          const double sj = s[static_cast<size_t>(j - j0)];
          const double p = std::exp(sj - m);
          spread = std::max(spread, m - sj);
          l += p;
          for (int64_t x = 0; x < d; ++x) {
            const double vx = kv[i].vd[static_cast<size_t>(j * d + x)];
            ref[static_cast<size_t>(x)] += p * vx;
            mass[static_cast<size_t>(x)] += p * std::abs(vx);
          }
        }
        // The cut covers the keys any query of the head sees; this query's run lies inside it.
        const int64_t head_lo = c.window > 0 ? std::max<int64_t>(0, c.q_pos0 - c.window + 1 - c.k_pos0) : 0;
        const int64_t head_hi = std::min(c.n_keys, c.q_pos0 + T - 1 - c.k_pos0 + 1);
        const double len = static_cast<double>(head_hi - head_lo);
        const double by_length = std::clamp(std::ceil(len / 256.0), 1.0, 64.0);
        const double page_cuts =
            c.page_rows > 0 ? static_cast<double>((head_hi - 1) / c.page_rows - head_lo / c.page_rows) : 0.0;
        const double depth = 32.0 + std::ceil(len / by_length / 32.0) + by_length + page_cuts + 2.0;
        const double eps_p = 2.0 * ds_max + kU * spread + 6.0 * kU;
        const double rel = 2.0 * eps_p + 2.0 * gamma_n(depth) + 2.0 * kU;
        const double ref_lse = m + std::log(l);
        const double lse_tol = ds_max + eps_p + gamma_n(depth) + kU * std::abs(ref_lse);
        if (std::abs(got_lse - ref_lse) > lse_tol && ++failures <= 5)
          ADD_FAILURE() << "head " << i << " t " << t << " h " << h << ": lse " << got_lse << " vs " << ref_lse
                        << " (tol " << lse_tol << ")";
        for (int64_t x = 0; x < d; ++x) {
          const double want = ref[static_cast<size_t>(x)] / l;
          const double tol = rel * mass[static_cast<size_t>(x)] / l + 1e-30;
          if (!(std::abs(o[x] - want) <= tol) && ++failures <= 5)
            ADD_FAILURE() << "head " << i << " t " << t << " h " << h << " col " << x << ": " << o[x] << " vs "
                          << want << " (tol " << tol << ")";
        }
      }
}

HostAttentionOptions limits(HostIsa isa, int threads) {
  HostAttentionOptions o;
  o.isa = isa;
  o.n_threads = threads;
  o.max_heads = 2;
  o.max_queries = 5;
  o.max_q_heads = 8;
  o.max_head_dim = 128;
  o.max_pages = 400;
  return o;
}

class EveryIsa : public ::testing::TestWithParam<HostIsa> {
 protected:
  void SetUp() override {
    if (!host_isa_supported(GetParam())) GTEST_SKIP() << host_isa_name(GetParam()) << " not run by this CPU";
  }
};

TEST_P(EveryIsa, DecodeMatchesDoubleReference) {
  HostAttention attn(limits(GetParam(), 2));
  uint32_t seed = 1;
  for (DType dtype : {DType::F32, DType::BF16, DType::F16})
    for (int64_t n_keys : {1, 17, 97, 1500, 4099})
      for (int64_t d : {64, 128})
        for (int64_t gqa : {1, 4, 8}) {
          Case c;
          c.dtype = dtype;
          c.n_keys = n_keys;
          c.head_dim = d;
          c.n_q_heads = gqa;
          check_case(attn, c, seed++);
        }
}

TEST_P(EveryIsa, ChunksWindowsPartsAndOddDims) {
  HostAttention attn(limits(GetParam(), 2));
  uint32_t seed = 1000;
  for (DType dtype : {DType::F32, DType::BF16, DType::F16})
    for (int64_t d : {8, 16, 40, 128})
      for (int64_t n_keys : {17, 1500}) {
        Case c;
        c.dtype = dtype;
        c.n_keys = n_keys;
        c.head_dim = d;
        c.n_q_heads = 4;
        c.n_queries = 5;  // a chunk: causal inside it
        check_case(attn, c, seed++);
        c.window = 13;    // sliding window: every query sees its own run
        check_case(attn, c, seed++);
        c.window = 0;
        c.scale_boost = 8.0f;  // peaky softmax: one key dominates
        check_case(attn, c, seed++);
        c.scale_boost = 1.0f;
        c.aligned = false;  // a part that starts later than some queries: those see nothing
        c.k_pos0 = 50;
        c.q_pos0 = 48;
        check_case(attn, c, seed++);
      }
}

// K/V in pages (the host tier's slabs): sizes that cut inside tiles, at tile and split edges, a
// last page that is short, one page that holds everything, windows and chunks across pages.
TEST_P(EveryIsa, PagedKvMatchesDoubleReference) {
  HostAttention attn(limits(GetParam(), 2));
  uint32_t seed = 2000;
  for (DType dtype : {DType::F32, DType::BF16})
    for (int64_t page_rows : {1, 13, 64, 256, 1000, 5000})
      for (int64_t n_keys : {17, 1500, 4099}) {
        if ((n_keys + page_rows - 1) / page_rows > 400) continue;  // over the limits built for
        Case c;
        c.dtype = dtype;
        c.n_keys = n_keys;
        c.head_dim = page_rows == 13 ? 40 : 128;
        c.n_q_heads = 4;
        c.page_rows = page_rows;
        check_case(attn, c, seed++);
        c.n_queries = 5;
        c.window = 97;
        check_case(attn, c, seed++);
        c.window = 0;
        c.aligned = false;
        c.k_pos0 = 50;
        c.q_pos0 = 48 + n_keys / 2;
        check_case(attn, c, seed++);
      }
}

INSTANTIATE_TEST_SUITE_P(Isa, EveryIsa, ::testing::Values(HostIsa::Scalar, HostIsa::Avx2, HostIsa::Avx512),
                         [](const auto& info) { return std::string(host_isa_name(info.param)); });

// Results depend on the shapes only: one thread and three threads give the same bits.
TEST(HostAttention, ThreadCountDoesNotChangeTheBits) {
  const HostIsa isa = best_host_isa();
  HostAttention one(limits(isa, 1)), three(limits(isa, 3));
  std::mt19937 rng(5);
  const int64_t n_keys = 9000, d = 128, nq = 4;
  const KvData kv = make_kv(DType::BF16, n_keys, d, rng);
  std::vector<float> q(static_cast<size_t>(nq * d)), out1(q.size()), out3(q.size()), lse1(nq), lse3(nq);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  for (float& x : q) x = dist(rng);
  auto args = [&](std::vector<float>& out, std::vector<float>& lse) {
    AttentionArgs a;
    a.q = MatView{q.data(), DType::F32, 1, nq * d, nq * d};
    a.kv = KvHeadView{kv.k.data(), kv.v.data(), DType::BF16, d};
    a.n_keys = n_keys;
    a.head_dim = d;
    a.n_q_heads = nq;
    a.q_pos0 = n_keys - 1;
    a.scale = 0.088f;
    a.out = MatView{out.data(), DType::F32, 1, nq * d, nq * d};
    a.lse = MatView{lse.data(), DType::F32, 1, nq, nq};
    return a;
  };
  const AttentionArgs a1 = args(out1, lse1), a3 = args(out3, lse3);
  one.run(std::span<const AttentionArgs>(&a1, 1));
  three.run(std::span<const AttentionArgs>(&a3, 1));
  EXPECT_EQ(0, std::memcmp(out1.data(), out3.data(), out1.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(lse1.data(), lse3.data(), lse1.size() * sizeof(float)));
}

// Pages change nothing but where the splits are cut: a head inside one page, or pages whose
// boundaries fall on the kernel's own cuts (1024 keys: splits of 256), gives the unpaged bits.
TEST(HostAttention, PagesOnTheKernelsCutsGiveTheSameBits) {
  const HostIsa isa = best_host_isa();
  HostAttention attn(limits(isa, 3));
  std::mt19937 rng(9);
  constexpr int64_t d = 128, nq = 4;
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  for (auto [n_keys, page_rows] : {std::pair<int64_t, int64_t>{1024, 256}, {1024, 512}, {700, 700}, {700, 4096}}) {
    SCOPED_TRACE(std::to_string(n_keys) + " keys, pages of " + std::to_string(page_rows));
    const KvData kv = make_kv(DType::BF16, n_keys, d, rng);
    const Pages pages = make_pages(kv, n_keys, d * 2, page_rows);
    std::vector<float> q(static_cast<size_t>(nq * d)), out_run(q.size()), out_paged(q.size()), lse_run(nq),
        lse_paged(nq);
    for (float& x : q) x = dist(rng);
    AttentionArgs a;
    a.q = MatView{q.data(), DType::F32, 1, nq * d, nq * d};
    a.kv = KvHeadView{kv.k.data(), kv.v.data(), DType::BF16, d};
    a.n_keys = n_keys;
    a.head_dim = d;
    a.n_q_heads = nq;
    a.q_pos0 = n_keys - 1;
    a.scale = 0.088f;
    a.out = MatView{out_run.data(), DType::F32, 1, nq * d, nq * d};
    a.lse = MatView{lse_run.data(), DType::F32, 1, nq, nq};
    attn.run(std::span<const AttentionArgs>(&a, 1));
    a.out.data = out_paged.data();
    a.lse.data = lse_paged.data();
    const HostKvPages view{pages.k_ptr.data(), pages.v_ptr.data(), page_rows};
    attn.run(std::span<const AttentionArgs>(&a, 1), std::span<const HostKvPages>(&view, 1));
    EXPECT_EQ(0, std::memcmp(out_run.data(), out_paged.data(), out_run.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(lse_run.data(), lse_paged.data(), lse_run.size() * sizeof(float)));
  }
}

TEST(HostAttention, PagedCallsOverItsLimitsAreRefused) {
  HostAttentionOptions o = limits(HostIsa::Scalar, 1);
  o.max_pages = 3;
  HostAttention attn(o);
  std::vector<float> buf(16 * 256, 1.0f);
  std::vector<const void*> table(8, buf.data());
  AttentionArgs a;
  a.q = MatView{buf.data(), DType::F32, 1, 16, 16};
  a.kv = KvHeadView{nullptr, nullptr, DType::F32, 16};
  a.n_keys = 40;
  a.q_pos0 = 39;
  a.head_dim = 16;
  a.n_q_heads = 1;
  a.out = MatView{buf.data() + 1024, DType::F32, 1, 16, 16};
  a.lse = MatView{buf.data() + 2048, DType::F32, 1, 1, 1};
  HostKvPages view{table.data(), table.data(), 10};  // 4 pages
  EXPECT_THROW(attn.run(std::span<const AttentionArgs>(&a, 1), std::span<const HostKvPages>(&view, 1)), Error);
  view.page_rows = 20;  // 2 pages: fine
  EXPECT_NO_THROW(attn.run(std::span<const AttentionArgs>(&a, 1), std::span<const HostKvPages>(&view, 1)));
  table[1] = nullptr;  // a page the keys reach is missing
  EXPECT_THROW(attn.run(std::span<const AttentionArgs>(&a, 1), std::span<const HostKvPages>(&view, 1)), Error);
}

TEST(HostAttention, CallsOverItsLimitsAreRefused) {
  HostAttention attn(limits(HostIsa::Scalar, 1));
  std::vector<float> buf(16 * 256, 1.0f);
  AttentionArgs a;
  a.q = MatView{buf.data(), DType::F32, 1, 9 * 16, 9 * 16};
  a.kv = KvHeadView{buf.data(), buf.data(), DType::F32, 16};
  a.n_keys = 4;
  a.head_dim = 16;
  a.n_q_heads = 9;  // over max_q_heads 8
  a.out = a.q;
  a.lse = MatView{buf.data(), DType::F32, 1, 9, 9};
  EXPECT_THROW(attn.run(std::span<const AttentionArgs>(&a, 1)), Error);
  std::vector<AttentionArgs> three(3, a);
  EXPECT_THROW(attn.run(three), Error);
}

// KV of one dtype for the read-rate figures: K, V [n_keys][128], values in (-1, 1) from a cheap
// LCG (std::mt19937 over 256 MiB takes longer than the timing), written once and reused by every
// ISA and thread count.
struct BenchKv {
  DType dtype = DType::BF16;
  int64_t n_keys = 0;
  std::vector<uint8_t> k, v;  // dtype [n_keys][128]
};

BenchKv make_bench_kv(DType dtype, size_t bytes) {
  constexpr int64_t d = 128;
  const auto elem = static_cast<int64_t>(dtype_size(dtype));
  BenchKv kv;
  kv.dtype = dtype;
  kv.n_keys = static_cast<int64_t>(bytes) / (2 * d * elem);
  kv.k.resize(static_cast<size_t>(kv.n_keys * d * elem));
  kv.v.resize(kv.k.size());
  uint32_t state = 12345;
  auto fill = [&](std::vector<uint8_t>& buf) {
    for (int64_t i = 0; i < kv.n_keys * d; ++i) {
      state = state * 1664525u + 1013904223u;
      const float x = static_cast<float>(state >> 8) * (2.0f / 16777216.0f) - 1.0f;
      if (dtype == DType::F32) {
        std::memcpy(buf.data() + i * 4, &x, 4);
      } else {
        const uint16_t h = dtype == DType::BF16 ? f32_to_bf16(x) : f32_to_f16(x);
        std::memcpy(buf.data() + i * 2, &h, 2);
      }
    }
  };
  fill(kv.k);
  fill(kv.v);
  return kv;
}

template <class Fn>
double best_seconds(int reps, Fn&& fn) {
  double best = 1e30;
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// Read rate of K and V by plain summing (as floats, whatever the dtype) with `threads` threads,
// each over its contiguous share of both buffers: the floor the kernel is measured against.
double plain_read_gbps(const BenchKv& kv, int threads, int reps) {
  std::vector<double> sums(static_cast<size_t>(threads));
  auto read = [&](int i) {
    float acc[16] = {};
    for (const std::vector<uint8_t>* buf : {&kv.k, &kv.v}) {
      const size_t n = buf->size() / sizeof(float);
      const auto* x = reinterpret_cast<const float*>(buf->data());
      const size_t b = n * static_cast<size_t>(i) / static_cast<size_t>(threads) / 16 * 16;
      const size_t e = n * static_cast<size_t>(i + 1) / static_cast<size_t>(threads) / 16 * 16;
      for (size_t p = b; p < e; p += 16)
        for (int l = 0; l < 16; ++l) acc[l] += x[p + static_cast<size_t>(l)];
    }
    double s = 0;
    for (float a : acc) s += a;
    sums[static_cast<size_t>(i)] = s;
  };
  const double sec = best_seconds(reps, [&] {
    std::vector<std::thread> pool;
    for (int i = 1; i < threads; ++i) pool.emplace_back(read, i);
    read(0);
    for (auto& th : pool) th.join();
  });
  return static_cast<double>(kv.k.size() + kv.v.size()) / sec / 1e9 + 0.0 * sums[0];
}

double attention_gbps(const BenchKv& kv, HostIsa isa, int threads, int64_t n_q_heads, int reps) {
  constexpr int64_t d = 128;
  HostAttentionOptions o;
  o.isa = isa;
  o.n_threads = threads;
  o.max_q_heads = n_q_heads;
  HostAttention attn(o);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(n_q_heads * d)), out(q.size()), lse(static_cast<size_t>(n_q_heads));
  for (float& x : q) x = dist(rng);
  AttentionArgs a;
  a.q = MatView{q.data(), DType::F32, 1, n_q_heads * d, n_q_heads * d};
  a.kv = KvHeadView{kv.k.data(), kv.v.data(), kv.dtype, d};
  a.n_keys = kv.n_keys;
  a.head_dim = d;
  a.n_q_heads = n_q_heads;
  a.q_pos0 = kv.n_keys - 1;
  a.scale = 1.0f / std::sqrt(static_cast<float>(d));
  a.out = MatView{out.data(), DType::F32, 1, n_q_heads * d, n_q_heads * d};
  a.lse = MatView{lse.data(), DType::F32, 1, n_q_heads, n_q_heads};
  attn.run(std::span<const AttentionArgs>(&a, 1));  // warm-up: caches, the pool's first wake
  const double sec = best_seconds(reps, [&] { attn.run(std::span<const AttentionArgs>(&a, 1)); });
  return static_cast<double>(kv.k.size() + kv.v.size()) / sec / 1e9;
}

// The planner's probe (measure_host_attention_gbps) on a small buffer: it runs and gives a rate.
TEST(HostAttention, KvReadProbeRuns) {
  HostAttentionOptions o;
  o.max_q_heads = 4;
  HostAttention attn(o);
  const double gbps = measure_host_attention_gbps(attn, DType::BF16, size_t{16} << 20, 4);
  std::printf("  planner probe, %s, 16 MiB BF16: %.2f GB/s\n", std::string(host_isa_name(attn.isa())).c_str(), gbps);
  EXPECT_GT(gbps, 0.0);
}

// Benchmark mode: decode read rate of every ISA path and dtype, one thread and every thread, next
// to a plain read of the same K and V with the same threads. Run it with
//   host_attention_tests --gtest_also_run_disabled_tests --gtest_filter='*KvReadBandwidthReport*'
// HEADINFER_BENCH_MIB (default 256) sets the K+V size, HEADINFER_BENCH_GQA (default 4) the group.
TEST(HostAttention, DISABLED_KvReadBandwidthReport) {
  const int all = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const char* mib_env = std::getenv("HEADINFER_BENCH_MIB");
  const char* gqa_env = std::getenv("HEADINFER_BENCH_GQA");
  const size_t bytes = (mib_env ? std::stoul(mib_env) : size_t{256}) << 20;
  const int64_t gqa = gqa_env ? std::stol(gqa_env) : 4;
  constexpr int kReps = 5;
  std::printf("host attention KV read, %s, decode (1 query, GQA %lld, head_dim 128), %zu MiB of K+V, best of %d\n",
              host_cpu_name().c_str(), static_cast<long long>(gqa), bytes >> 20, kReps);
  std::vector<int> thread_counts{1};
  if (all > 1) thread_counts.push_back(all);
  for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
    const BenchKv kv = make_bench_kv(dt, bytes);
    for (int threads : thread_counts) {
      std::printf("  %-4s %2d thread%s  plain read %6.2f GB/s |", std::string(dtype_name(dt)).c_str(), threads,
                  threads == 1 ? " " : "s", plain_read_gbps(kv, threads, kReps));
      for (HostIsa isa : isas_here()) {
        const double gbps = attention_gbps(kv, isa, threads, gqa, kReps);
        std::printf("  %s %6.2f", std::string(host_isa_name(isa)).c_str(), gbps);
        EXPECT_GT(gbps, 0.0);
      }
      std::printf("  GB/s\n");
      std::fflush(stdout);
    }
  }
}

}  // namespace
}  // namespace headinfer
