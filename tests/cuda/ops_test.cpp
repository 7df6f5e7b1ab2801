// Every CUDA op except attention against the CPU reference, on fresh random inputs and awkward
// sizes; tolerances come from the arithmetic each op does (see each test).
#include <algorithm>
#include <array>
#include <random>
#include <tuple>
#include <cmath>
#include <cstring>
#include <limits>

#include "cuda_test_util.h"
#include "headinfer/error.h"

namespace headinfer::test {
namespace {

const DType kWeightTypes[] = {DType::F32, DType::BF16, DType::F16};

TEST_F(CudaTest, FactoryRejectsMissingOrdinal) {
  EXPECT_THROW(make_cuda_device({.ordinal = 99}), Error);
}

TEST_F(CudaTest, BudgetIsEnforcedAndCounted) {
  auto dev = make_cuda_device({.ordinal = 0, .memory_budget = 1 << 20});
  void* p = dev->alloc(1000, "a");
  EXPECT_EQ(dev->bytes_in_use(), 1000u);
  EXPECT_THROW(dev->alloc(1 << 20, "too much"), Error);
  dev->free(p);
  EXPECT_EQ(dev->bytes_in_use(), 0u);
  EXPECT_EQ(dev->peak_bytes(), 1000u);
}

// The pre-load check counts the ops' scratch from workspace_bytes(): it must be what
// reserve_workspace() then takes, for f32 and 16-bit weights, decode-sized and prefill-sized.
TEST_F(CudaTest, WorkspaceBytesIsWhatReserveTakes) {
  for (DType wt : {DType::F32, DType::BF16})
    for (int64_t tokens : {1, 8192}) {
      auto dev = make_cuda_device({});
      OpsWorkspaceSizes ws;
      ws.max_tokens = tokens;
      ws.max_in_features = 14336;
      ws.weight_dtype = wt;
      ws.max_q_heads = 4;
      ws.max_kv_heads = 8;
      ws.head_dim = 128;
      const size_t before = dev->bytes_in_use();
      dev->ops().reserve_workspace(ws);
      EXPECT_EQ(dev->bytes_in_use() - before, dev->ops().workspace_bytes(ws)) << dtype_name(wt) << " T=" << tokens;
      EXPECT_GE(dev->ops().workspace_bytes(ws), size_t{32} << 20);  // cuBLASLt's workspace at least
    }
}

// Widening is exact, so the rows must match bit for bit.
TEST_F(CudaTest, Embedding) {
  for (DType t : kWeightTypes) {
    const int64_t vocab = 97, hidden = 1500;
    auto table = random_floats(vocab * hidden);
    const auto bytes = encode(table, t);
    auto d_table = upload(bytes);
    std::vector<int32_t> ids(17);
    for (auto& id : ids) id = static_cast<int32_t>(rng_() % vocab);
    auto d_out = poisoned(ids.size() * hidden);
    gpu_->ops().embedding(ids, WeightView{d_table.data(), t, vocab, hidden}, view(d_out.data(), 17, hidden, hidden));
    std::vector<float> ref(ids.size() * hidden);
    cpu_->ops().embedding(ids, WeightView{bytes.data(), t, vocab, hidden}, view(ref.data(), 17, hidden, hidden));
    expect_within(download(d_out, ref.size()), ref, 0.0, 0.0, "embedding " + std::string(dtype_name(t)));
  }
  std::vector<int32_t> bad{5, 97};
  DeviceBuffer table(*gpu_, 97 * 16 * 4, "t"), out(*gpu_, 2 * 16 * 4, "o");
  EXPECT_THROW(gpu_->ops().embedding(bad, WeightView{table.data(), DType::F32, 97, 16}, view(out.data(), 2, 16, 16)),
               Error);
}

// Sum of squares in a different order: worst case (n/8 + n/32 + 16) roundings of a positive sum,
// halved by the square root, plus a few roundings in the final products.
TEST_F(CudaTest, RmsNorm) {
  for (DType wt : {DType::F32, DType::BF16}) {
    for (int64_t cols : {16, 97, 1500, 4096, 5003}) {  // 5003: past the wide kernel's first chunk
      for (int64_t rows : {1, 17, 97}) {
        const int64_t stride = cols + 3;  // a strided input catches row-indexing mistakes
        auto x = random_floats(rows * stride, -3.0f, 3.0f);
        auto w = random_floats(cols, 0.5f, 1.5f);
        const auto wbytes = encode(w, wt);
        auto d_x = upload(x);
        auto d_w = upload(wbytes);
        auto d_out = poisoned(rows * cols);
        gpu_->ops().rms_norm(view(d_x.data(), rows, cols, stride), VecView{d_w.data(), wt, cols}, 1e-5f,
                             view(d_out.data(), rows, cols, cols));
        std::vector<float> ref(rows * cols);
        cpu_->ops().rms_norm(view(x.data(), rows, cols, stride), VecView{wbytes.data(), wt, cols}, 1e-5f,
                             view(ref.data(), rows, cols, cols));
        const double rtol = kF32Eps * ((cols / 8 + cols / 32 + 16) / 2.0 + 4);
        expect_within(download(d_out, ref.size()), ref, 0.0, rtol,
                      "rms_norm " + std::string(dtype_name(wt)) + " " + std::to_string(rows) + "x" +
                          std::to_string(cols));
        // In place (x and out alias), as the model's q/k norm calls it.
        gpu_->ops().rms_norm(view(d_x.data(), rows, cols, stride), VecView{d_w.data(), wt, cols}, 1e-5f,
                             view(d_x.data(), rows, cols, stride));
        auto inplace = download(d_x, rows * stride);
        std::vector<float> got(rows * cols);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) got[r * cols + c] = inplace[r * stride + c];
        expect_within(got, ref, 0.0, rtol, "rms_norm in place " + std::to_string(cols));
      }
    }
  }
}

// y = x W^T (+ b): per output the fp32 dot-product bound (dot_tolerance); with 16-bit weights and
// more than 8 rows, x is rounded to the weight dtype first, adding u_w * sum|x w|.
TEST_F(CudaTest, Linear) {
  struct Shape { int64_t rows, in, out; };
  const Shape shapes[] = {{1, 64, 17}, {1, 1500, 97}, {7, 97, 1500}, {17, 1500, 97}, {97, 64, 1500}, {1, 4096, 4096}};
  for (DType wt : kWeightTypes) {
    for (const Shape& s : shapes) {
      for (bool with_bias : {false, true}) {
        const int64_t x_stride = s.in + (s.rows > 1 ? 4 : 0);
        auto x = random_floats(s.rows * x_stride);
        auto w = random_floats(s.out * s.in);
        auto b = random_floats(s.out);
        const auto wbytes = encode(w, wt);
        const auto bbytes = encode(b, wt);
        auto d_x = upload(x);
        auto d_w = upload(wbytes);
        auto d_b = upload(bbytes);
        auto d_y = poisoned(s.rows * s.out);
        const VecView gb{d_b.data(), wt, s.out}, cb{bbytes.data(), wt, s.out};
        gpu_->ops().linear(view(d_x.data(), s.rows, s.in, x_stride), WeightView{d_w.data(), wt, s.out, s.in},
                           with_bias ? &gb : nullptr, view(d_y.data(), s.rows, s.out, s.out));
        std::vector<float> ref(s.rows * s.out);
        cpu_->ops().linear(view(x.data(), s.rows, s.in, x_stride), WeightView{wbytes.data(), wt, s.out, s.in},
                           with_bias ? &cb : nullptr, view(ref.data(), s.rows, s.out, s.out));
        const bool rounds_x = wt != DType::F32 && s.rows > 8;
        std::vector<double> tol(ref.size());
        for (int64_t t = 0; t < s.rows; ++t)
          for (int64_t j = 0; j < s.out; ++j) {
            double abs_sum = 0;
            for (int64_t i = 0; i < s.in; ++i) abs_sum += std::fabs(x[t * x_stride + i] * w[j * s.in + i]);
            tol[t * s.out + j] = dot_tolerance(s.in, abs_sum) + (rounds_x ? unit_roundoff(wt) * abs_sum : 0.0) +
                                 2 * kF32Eps * std::fabs(ref[t * s.out + j]);
          }
        expect_within(download(d_y, ref.size()), ref, tol,
                      "linear " + std::string(dtype_name(wt)) + " " + std::to_string(s.rows) + "x" +
                          std::to_string(s.in) + "->" + std::to_string(s.out) + (with_bias ? " +bias" : ""));
      }
    }
  }
}

// The angle is the same fp32 product on both sides; cosf/sinf and std::cos/sin differ by a few
// ulp, so each output is off by at most ~8u (|x1| + |x2|) times the attention factor.
TEST_F(CudaTest, Rope) {
  for (int64_t head_dim : {16, 64, 128}) {
    for (int64_t pos0 : {0, 1500, 100000}) {
      for (float factor : {1.0f, 1.2f}) {
        const int64_t rows = 17, n_heads = 3, cols = n_heads * head_dim + 5;
        std::vector<float> inv_freq(head_dim / 2);
        for (int64_t i = 0; i < head_dim / 2; ++i)
          inv_freq[i] = static_cast<float>(1.0 / std::pow(500000.0, 2.0 * i / head_dim));
        auto x = random_floats(rows * cols);
        auto d_x = upload(x);
        auto d_f = upload(inv_freq);
        gpu_->ops().rope(view(d_x.data(), rows, cols, cols), n_heads, RopeTable{d_f.as<float>(), head_dim, factor},
                         pos0);
        std::vector<float> ref = x;
        cpu_->ops().rope(view(ref.data(), rows, cols, cols), n_heads, RopeTable{inv_freq.data(), head_dim, factor},
                         pos0);
        std::vector<double> tol(ref.size(), 0.0);
        const int64_t half = head_dim / 2;
        for (int64_t t = 0; t < rows; ++t)
          for (int64_t h = 0; h < n_heads; ++h)
            for (int64_t i = 0; i < half; ++i) {
              const int64_t a = t * cols + h * head_dim + i, b = a + half;
              const double bound = 8 * kF32Eps * factor * (std::fabs(x[a]) + std::fabs(x[b]));
              tol[a] = tol[b] = bound;
            }
        expect_within(download(d_x, x.size()), ref, tol,
                      "rope d=" + std::to_string(head_dim) + " pos0=" + std::to_string(pos0) +
                          " factor=" + std::to_string(factor));
      }
    }
  }
}

// Same formula as the CPU; expf/logf against std::exp/log differ by an ulp or two.
TEST_F(CudaTest, AttentionMerge) {
  const int64_t rows = 17, n_heads = 4, head_dim = 64, cols = n_heads * head_dim;
  auto out_a = random_floats(rows * cols), out_b = random_floats(rows * cols);
  auto lse_a = random_floats(rows * n_heads, -5.0f, 20.0f), lse_b = random_floats(rows * n_heads, -5.0f, 20.0f);
  const float inf = std::numeric_limits<float>::infinity();
  lse_a[3] = -inf;  // a empty: b is copied
  lse_b[5] = -inf;  // b empty: a stays
  lse_a[7] = lse_b[7] = -inf;
  auto d_oa = upload(out_a), d_ob = upload(out_b), d_la = upload(lse_a), d_lb = upload(lse_b);
  gpu_->ops().attention_merge(view(d_oa.data(), rows, cols, cols), view(d_la.data(), rows, n_heads, n_heads),
                              view(d_ob.data(), rows, cols, cols), view(d_lb.data(), rows, n_heads, n_heads),
                              head_dim);
  cpu_->ops().attention_merge(view(out_a.data(), rows, cols, cols), view(lse_a.data(), rows, n_heads, n_heads),
                              view(out_b.data(), rows, cols, cols), view(lse_b.data(), rows, n_heads, n_heads),
                              head_dim);
  expect_within(download(d_oa, out_a.size()), out_a, 16 * kF32Eps, 16 * kF32Eps, "attention_merge out");
  expect_within(download(d_la, lse_a.size()), lse_a, 16 * kF32Eps, 4 * kF32Eps, "attention_merge lse");
}

TEST_F(CudaTest, SiluMulAddCopy) {
  const int64_t rows = 97, cols = 1500, stride = 1503;
  auto gate = random_floats(rows * stride, -8.0f, 8.0f), up = random_floats(rows * stride);
  auto d_gate = upload(gate), d_up = upload(up);
  // In place into gate, as the model calls it. expf vs std::exp: a few ulp through the sigmoid.
  gpu_->ops().silu_mul(view(d_gate.data(), rows, cols, stride), view(d_up.data(), rows, cols, stride),
                       view(d_gate.data(), rows, cols, stride));
  cpu_->ops().silu_mul(view(gate.data(), rows, cols, stride), view(up.data(), rows, cols, stride),
                       view(gate.data(), rows, cols, stride));
  expect_within(download(d_gate, gate.size()), gate, 0.0, 8 * kF32Eps, "silu_mul");

  auto x = random_floats(rows * stride), y = random_floats(rows * cols);
  auto d_x = upload(x), d_y = upload(y);
  gpu_->ops().add(view(d_x.data(), rows, cols, stride), view(d_y.data(), rows, cols, cols));
  cpu_->ops().add(view(x.data(), rows, cols, stride), view(y.data(), rows, cols, cols));
  expect_within(download(d_x, x.size()), x, 0.0, 0.0, "add");

  // Strided copies, with widening (exact) and narrowing to the KV dtypes (round to nearest even).
  for (DType st : kWeightTypes) {
    auto src = random_floats(rows * stride);
    const auto sbytes = encode(src, st);
    auto d_src = upload(sbytes);
    auto d_dst = poisoned(rows * cols);
    gpu_->ops().copy(view(d_src.data(), rows, cols, stride, st), view(d_dst.data(), rows, cols, cols));
    std::vector<float> ref(rows * cols);
    cpu_->ops().copy(view(const_cast<uint8_t*>(sbytes.data()), rows, cols, stride, st),
                     view(ref.data(), rows, cols, cols));
    expect_within(download(d_dst, ref.size()), ref, 0.0, 0.0, "copy " + std::string(dtype_name(st)) + "->F32");
  }
  for (DType dt : {DType::BF16, DType::F16}) {
    auto src = random_floats(rows * cols);
    auto d_src = upload(src);
    DeviceBuffer d_dst(*gpu_, rows * cols * 2, "narrow");
    gpu_->ops().copy(view(d_src.data(), rows, cols, cols), view(d_dst.data(), rows, cols, cols, dt));
    std::vector<uint16_t> got(rows * cols);
    gpu_->read_to_host(got.data(), d_dst.data(), got.size() * 2);
    size_t bad = 0;
    for (size_t i = 0; i < got.size(); ++i)
      bad += got[i] != (dt == DType::BF16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]));
    EXPECT_EQ(bad, 0u) << "copy F32->" << dtype_name(dt);
  }
}

// Gemma's elementwise ops. gelu_tanh: the same fp32 sequence on both sides but tanhf vs std::tanh
// (a few ulp, times a slope <= 1 and |g|/2), so 8u of |g u| covers it. scale is one exact-rounded
// multiply (bit-identical); softcap differs by tanh's few ulp times cap.
TEST_F(CudaTest, GeluTanhMulScaleSoftcap) {
  const int64_t rows = 97, cols = 1500, stride = 1503;
  auto gate = random_floats(rows * stride, -8.0f, 8.0f), up = random_floats(rows * stride);
  auto d_gate = upload(gate), d_up = upload(up);
  std::vector<double> tol(gate.size());
  for (size_t i = 0; i < gate.size(); ++i) tol[i] = 8 * kF32Eps * std::fabs(gate[i] * up[i]) + 1e-30;
  gpu_->ops().gelu_tanh_mul(view(d_gate.data(), rows, cols, stride), view(d_up.data(), rows, cols, stride),
                            view(d_gate.data(), rows, cols, stride));
  cpu_->ops().gelu_tanh_mul(view(gate.data(), rows, cols, stride), view(up.data(), rows, cols, stride),
                            view(gate.data(), rows, cols, stride));
  for (int64_t r = 0; r < rows; ++r)  // the stride padding is untouched on both sides
    for (int64_t c = cols; c < stride; ++c) tol[r * stride + c] = 0.0;
  expect_within(download(d_gate, gate.size()), gate, tol, "gelu_tanh_mul");

  auto x = random_floats(rows * stride, -100.0f, 100.0f);
  auto d_x = upload(x);
  gpu_->ops().scale(view(d_x.data(), rows, cols, stride), 45.254833f);
  cpu_->ops().scale(view(x.data(), rows, cols, stride), 45.254833f);
  expect_within(download(d_x, x.size()), x, 0.0, 0.0, "scale");

  for (float cap : {30.0f, 2.0f}) {
    auto l = random_floats(rows * stride, -200.0f, 200.0f);
    auto d_l = upload(l);
    gpu_->ops().softcap(view(d_l.data(), rows, cols, stride), cap);
    cpu_->ops().softcap(view(l.data(), rows, cols, stride), cap);
    expect_within(download(d_l, l.size()), l, 4 * kF32Eps * cap, 0.0, "softcap " + std::to_string(cap));
  }
}

// Partial rotary (phi3): only the first rotary_dim dims of each head turn; the rest are untouched,
// bit for bit. Tolerance as in Rope.
TEST_F(CudaTest, RopePartialRotary) {
  const int64_t head_dim = 96, rotary = 48, rows = 17, n_heads = 3, cols = n_heads * head_dim;
  std::vector<float> inv_freq(rotary / 2);
  for (int64_t i = 0; i < rotary / 2; ++i) inv_freq[i] = static_cast<float>(1.0 / std::pow(10000.0, 2.0 * i / rotary));
  auto x = random_floats(rows * cols);
  auto d_x = upload(x);
  auto d_f = upload(inv_freq);
  gpu_->ops().rope(view(d_x.data(), rows, cols, cols), n_heads, RopeTable{d_f.as<float>(), head_dim, 1.19f, rotary},
                   4000);
  std::vector<float> ref = x;
  cpu_->ops().rope(view(ref.data(), rows, cols, cols), n_heads, RopeTable{inv_freq.data(), head_dim, 1.19f, rotary},
                   4000);
  std::vector<double> tol(ref.size(), 0.0);
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t h = 0; h < n_heads; ++h)
      for (int64_t i = 0; i < rotary / 2; ++i) {
        const int64_t a = t * cols + h * head_dim + i, b = a + rotary / 2;
        tol[a] = tol[b] = 8 * kF32Eps * 1.19 * (std::fabs(x[a]) + std::fabs(x[b]));
      }
  expect_within(download(d_x, x.size()), ref, tol, "rope partial rotary");
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t h = 0; h < n_heads; ++h)
      for (int64_t i = rotary; i < head_dim; ++i) EXPECT_EQ(ref[t * cols + h * head_dim + i], x[t * cols + h * head_dim + i]);
}

// rope_qk (q and k rotated by one launch) equals rope() of q and rope() of k, bit for bit, with
// the views' own strides, partial rotary and one row or several; the columns past the heads stay.
TEST_F(CudaTest, RopeQkEqualsTwoRopes) {
  for (const int64_t rows : {1, 7})
    for (const int64_t rotary : {64, 128}) {
      const int64_t head_dim = 128, nq = 8, nk = 2, q_cols = nq * head_dim + 4, k_cols = nk * head_dim + 12;
      std::vector<float> inv_freq(rotary / 2);
      for (int64_t i = 0; i < rotary / 2; ++i)
        inv_freq[i] = static_cast<float>(1.0 / std::pow(500000.0, 2.0 * i / rotary));
      const auto q = random_floats(rows * q_cols, -3.0f, 3.0f), k = random_floats(rows * k_cols, -3.0f, 3.0f);
      auto d_f = upload(inv_freq);
      auto q1 = upload(q), k1 = upload(k), q2 = upload(q), k2 = upload(k);
      const RopeTable table{d_f.as<float>(), head_dim, 1.1f, rotary};
      gpu_->ops().rope_qk(view(q1.data(), rows, q_cols, q_cols), nq, view(k1.data(), rows, k_cols, k_cols), nk, table,
                          123457);
      gpu_->ops().rope(view(q2.data(), rows, q_cols, q_cols), nq, table, 123457);
      gpu_->ops().rope(view(k2.data(), rows, k_cols, k_cols), nk, table, 123457);
      const auto hq1 = download(q1, q.size()), hq2 = download(q2, q.size());
      const auto hk1 = download(k1, k.size()), hk2 = download(k2, k.size());
      EXPECT_EQ(hq1, hq2) << "rows=" << rows << " rotary=" << rotary;
      EXPECT_EQ(hk1, hk2) << "rows=" << rows << " rotary=" << rotary;
      EXPECT_NE(hq1, q);  // something turned
      EXPECT_NE(hk1, k);
      EXPECT_EQ(hk1[static_cast<size_t>(k_cols - 1)], k[static_cast<size_t>(k_cols - 1)]);  // past the heads
    }
}

// copy_heads_kv equals copy_heads of the keys and copy_heads of the values, bit for bit: one launch
// when the two pairs of views differ only in their pointers, two when they differ in more.
TEST_F(CudaTest, CopyHeadsKvEqualsTwoCopyHeads) {
  for (const bool same_shape : {true, false}) {
    const int64_t rows = 3, d = 128, H = 4, stride = 2000, src_ld = H * d + 16;
    const auto k = random_floats(rows * src_ld), v = random_floats(rows * src_ld);
    auto d_k = upload(k), d_v = upload(v);
    std::vector<uint16_t> zero(static_cast<size_t>(H * stride + rows * (d + 8)), 0);
    auto ka = upload(zero), va = upload(zero), kb = upload(zero), vb = upload(zero);
    const MatView ks = view(d_k.data(), rows, H * d, src_ld), vs = view(d_v.data(), rows, H * d, src_ld);
    const int64_t v_ld = same_shape ? d : d + 8;  // another row stride for V: the two-launch path
    gpu_->ops().copy_heads_kv(ks, vs, H, MatView{ka.data(), DType::BF16, rows, d, d},
                              MatView{va.data(), DType::BF16, rows, d, v_ld}, stride);
    gpu_->ops().copy_heads(ks, H, MatView{kb.data(), DType::BF16, rows, d, d}, stride);
    gpu_->ops().copy_heads(vs, H, MatView{vb.data(), DType::BF16, rows, d, v_ld}, stride);
    auto host = [&](const DeviceBuffer& b) {
      std::vector<uint16_t> h(zero.size());
      gpu_->read_to_host(h.data(), b.data(), h.size() * 2);
      return h;
    };
    const auto hka = host(ka), hva = host(va);
    EXPECT_EQ(hka, host(kb)) << "same_shape=" << same_shape;
    EXPECT_EQ(hva, host(vb)) << "same_shape=" << same_shape;
    EXPECT_NE(hka[static_cast<size_t>(3 * stride)], 0);
    EXPECT_NE(hva[static_cast<size_t>(3 * stride)], 0);
    EXPECT_NE(hka, hva);
  }
}

// linear_gated (the decode GEMV that computes gate and up rows in one warp and writes only the
// activation's product) equals linear_multi then silu_mul / gelu_tanh_mul, bit for bit: one token
// (the fused kernel), three tokens and a bias (the two-op path), both activations, 16-bit weights,
// an output row count that leaves the last block part empty; the result is the F32 h down_proj reads.
TEST_F(CudaTest, LinearGatedEqualsLinearsThenActivation) {
  for (DType dt : {DType::BF16, DType::F16})
    for (Activation act : {Activation::Silu, Activation::GeluTanh})
      for (int64_t T : {1, 3})
        for (bool bias : {false, true}) {
          const int64_t in = 2048 + 8, ffn = 1000 + 4;
          const auto x = random_floats(T * in, -2.0f, 2.0f);
          auto d_x = upload(x);
          auto wg_f = random_floats(ffn * in, -0.1f, 0.1f), wu_f = random_floats(ffn * in, -0.1f, 0.1f);
          auto bg_f = random_floats(ffn), bu_f = random_floats(ffn);
          auto wg = upload(encode(wg_f, dt)), wu = upload(encode(wu_f, dt));
          auto bg = upload(encode(bg_f, dt)), bu = upload(encode(bu_f, dt));
          const WeightView wgv{wg.data(), dt, ffn, in}, wuv{wu.data(), dt, ffn, in};
          const VecView bgv{bg.data(), dt, ffn}, buv{bu.data(), dt, ffn};
          auto ga = poisoned(T * ffn), ua = poisoned(T * ffn), gb = poisoned(T * ffn), ub = poisoned(T * ffn);
          const MatView xv = view(d_x.data(), T, in, in);
          const std::array<LinearOut, 2> a{LinearOut{&wgv, bias ? &bgv : nullptr, view(ga.data(), T, ffn, ffn)},
                                           LinearOut{&wuv, bias ? &buv : nullptr, view(ua.data(), T, ffn, ffn)}};
          const std::array<LinearOut, 2> b{LinearOut{&wgv, bias ? &bgv : nullptr, view(gb.data(), T, ffn, ffn)},
                                           LinearOut{&wuv, bias ? &buv : nullptr, view(ub.data(), T, ffn, ffn)}};
          gpu_->ops().linear_gated(xv, a, act, a[0].y);  // in place over gate, as the model runs it
          gpu_->ops().linear_multi(xv, b);
          if (act == Activation::GeluTanh) {
            gpu_->ops().gelu_tanh_mul(b[0].y, b[1].y, b[0].y);
          } else {
            gpu_->ops().silu_mul(b[0].y, b[1].y, b[0].y);
          }
          const auto ha = download(ga, T * ffn), hb = download(gb, T * ffn);
          EXPECT_EQ(0, std::memcmp(ha.data(), hb.data(), ha.size() * 4))
              << dtype_name(dt) << " T=" << T << " bias=" << bias << " gelu=" << (act == Activation::GeluTanh);
          EXPECT_FALSE(std::isnan(ha[0]));
          EXPECT_FALSE(std::isnan(ha[static_cast<size_t>(T * ffn - 1)]));
        }
}

// q/k/v and gate/up in one launch give each output exactly what its own linear() gives.
TEST_F(CudaTest, LinearMultiEqualsSeparateLinears) {
  for (DType dt : {DType::BF16, DType::F16, DType::F32})
    for (int64_t T : {1, 3, 9}) {
      const int64_t in = 4096 + 8 * (T == 3);
      const int64_t outs[3] = {512, 128, 136};
      auto x = random_floats(T * in);
      auto d_x = upload(x);
      std::vector<DeviceBuffer> ws, bs, ya, yb;
      std::vector<WeightView> wv;
      std::vector<VecView> bv;
      for (int64_t o : outs) {
        auto w = random_floats(o * in), b = random_floats(o);
        ws.push_back(upload(encode(w, dt)));
        bs.push_back(upload(encode(b, dt)));
        ya.push_back(poisoned(T * o));
        yb.push_back(poisoned(T * o));
      }
      for (int i = 0; i < 3; ++i) {
        wv.push_back(WeightView{ws[i].data(), dt, outs[i], in});
        bv.push_back(VecView{bs[i].data(), dt, outs[i]});
      }
      const MatView xv = view(d_x.data(), T, in, in);
      const LinearOut lo[] = {{&wv[0], nullptr, view(ya[0].data(), T, outs[0], outs[0])},
                              {&wv[1], &bv[1], view(ya[1].data(), T, outs[1], outs[1])},
                              {&wv[2], nullptr, view(ya[2].data(), T, outs[2], outs[2])}};
      gpu_->ops().linear_multi(xv, lo);
      for (int i = 0; i < 3; ++i)
        gpu_->ops().linear(xv, wv[i], i == 1 ? &bv[1] : nullptr, view(yb[i].data(), T, outs[i], outs[i]));
      for (int i = 0; i < 3; ++i) {
        const auto a = download(ya[i], T * outs[i]), b = download(yb[i], T * outs[i]);
        EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4)) << dtype_name(dt) << " T=" << T << " out " << i;
        EXPECT_FALSE(std::isnan(a[0]));
      }
    }
}

// The prefill's fused and 16-bit-out ops against the plain sequence they replace, bit for bit:
// add_rms_norm = add then rms_norm; a 16-bit out = the F32 out rounded by copy(); a linear of a
// 16-bit x = the linear of the F32 x it was rounded from (which rounds x itself).
TEST_F(CudaTest, FusedNormAndSixteenBitInputsAreBitIdenticalToThePlainOps) {
  auto bytes = [&](const DeviceBuffer& b, size_t n) {
    std::vector<uint8_t> v(n);
    gpu_->read_to_host(v.data(), b.data(), n);
    return v;
  };
  auto narrowed = [&](const DeviceBuffer& f32, int64_t rows, int64_t cols, DType dt) {
    DeviceBuffer d(*gpu_, rows * cols * 2, "narrow");
    gpu_->ops().copy(view(f32.data(), rows, cols, cols), view(d.data(), rows, cols, cols, dt));
    return bytes(d, rows * cols * 2);
  };
  for (DType wt : {DType::F32, DType::BF16})
    for (int64_t cols : {16, 97, 1500, 4096, 5003})
      for (int64_t rows : {1, 17}) {
        const std::string what = std::string(dtype_name(wt)) + " " + std::to_string(rows) + "x" + std::to_string(cols);
        const int64_t stride = cols + 3;
        auto x = random_floats(rows * stride, -3.0f, 3.0f), y = random_floats(rows * cols, -3.0f, 3.0f);
        auto w = random_floats(cols, 0.5f, 1.5f);
        auto d_w = upload(encode(w, wt));
        const VecView wv{d_w.data(), wt, cols};
        auto d_xa = upload(x), d_xb = upload(x), d_y = upload(y);
        auto d_a = poisoned(rows * cols), d_b = poisoned(rows * cols);
        const MatView xa = view(d_xa.data(), rows, cols, stride), xb = view(d_xb.data(), rows, cols, stride);
        const MatView yv = view(d_y.data(), rows, cols, cols);
        gpu_->ops().add_rms_norm(xa, yv, wv, 1e-5f, view(d_a.data(), rows, cols, cols));
        gpu_->ops().add(xb, yv);
        gpu_->ops().rms_norm(xb, wv, 1e-5f, view(d_b.data(), rows, cols, cols));
        EXPECT_EQ(bytes(d_xa, rows * stride * 4), bytes(d_xb, rows * stride * 4)) << "add_rms_norm's x, " << what;
        EXPECT_EQ(bytes(d_a, rows * cols * 4), bytes(d_b, rows * cols * 4)) << "add_rms_norm, " << what;
        EXPECT_FALSE(std::isnan(download(d_a, 1)[0]));
        for (DType dt : {DType::BF16, DType::F16}) {
          DeviceBuffer d_n(*gpu_, rows * cols * 2, "norm out");
          gpu_->ops().rms_norm(xb, wv, 1e-5f, view(d_n.data(), rows, cols, cols, dt));
          EXPECT_EQ(bytes(d_n, rows * cols * 2), narrowed(d_b, rows, cols, dt)) << "rms_norm -> " << dtype_name(dt) << ", " << what;
          auto d_xc = upload(x);
          gpu_->ops().add_rms_norm(view(d_xc.data(), rows, cols, stride), yv, wv, 1e-5f,
                                   view(d_n.data(), rows, cols, cols, dt));
          EXPECT_EQ(bytes(d_n, rows * cols * 2), narrowed(d_b, rows, cols, dt))
              << "add_rms_norm -> " << dtype_name(dt) << ", " << what;
        }
      }

  // silu_mul and gelu_tanh_mul into 16-bit outs.
  const int64_t rows = 19, cols = 1500, stride = 1503;
  auto gate = random_floats(rows * stride, -8.0f, 8.0f), up = random_floats(rows * stride);
  auto d_gate = upload(gate), d_up = upload(up);
  const MatView gv = view(d_gate.data(), rows, cols, stride), uv = view(d_up.data(), rows, cols, stride);
  for (bool gelu : {false, true}) {
    auto d_f = poisoned(rows * cols);
    const MatView fv = view(d_f.data(), rows, cols, cols);
    gelu ? gpu_->ops().gelu_tanh_mul(gv, uv, fv) : gpu_->ops().silu_mul(gv, uv, fv);
    for (DType dt : {DType::BF16, DType::F16}) {
      DeviceBuffer d_h(*gpu_, rows * cols * 2, "activation out");
      const MatView hv = view(d_h.data(), rows, cols, cols, dt);
      gelu ? gpu_->ops().gelu_tanh_mul(gv, uv, hv) : gpu_->ops().silu_mul(gv, uv, hv);
      EXPECT_EQ(bytes(d_h, rows * cols * 2), narrowed(d_f, rows, cols, dt))
          << (gelu ? "gelu_tanh_mul" : "silu_mul") << " -> " << dtype_name(dt);
    }
  }

  // 16-bit gate and up (a 16-bit GEMM's y) into a 16-bit out: the F32 activation of the widened
  // inputs, rounded once.
  for (DType dt : {DType::BF16, DType::F16}) {
    DeviceBuffer d_g16(*gpu_, rows * stride * 2, "gate16"), d_u16(*gpu_, rows * stride * 2, "up16");
    const MatView g16 = view(d_g16.data(), rows, cols, stride, dt), u16 = view(d_u16.data(), rows, cols, stride, dt);
    gpu_->ops().copy(gv, g16);
    gpu_->ops().copy(uv, u16);
    auto d_gw = poisoned(rows * cols), d_uw = poisoned(rows * cols);
    const MatView gw = view(d_gw.data(), rows, cols, cols), uw = view(d_uw.data(), rows, cols, cols);
    gpu_->ops().copy(g16, gw);
    gpu_->ops().copy(u16, uw);
    for (bool gelu : {false, true}) {
      auto d_f = poisoned(rows * cols);
      const MatView fv = view(d_f.data(), rows, cols, cols);
      gelu ? gpu_->ops().gelu_tanh_mul(gw, uw, fv) : gpu_->ops().silu_mul(gw, uw, fv);
      DeviceBuffer d_h(*gpu_, rows * cols * 2, "activation out");
      const MatView hv = view(d_h.data(), rows, cols, cols, dt);
      gelu ? gpu_->ops().gelu_tanh_mul(g16, u16, hv) : gpu_->ops().silu_mul(g16, u16, hv);
      EXPECT_EQ(bytes(d_h, rows * cols * 2), narrowed(d_f, rows, cols, dt))
          << (gelu ? "gelu_tanh_mul" : "silu_mul") << " of 16-bit inputs, " << dtype_name(dt);
    }
    // 16-bit inputs with an F32 out, or an out of the other 16-bit dtype, are refused.
    auto d_f = poisoned(rows * cols);
    EXPECT_THROW(gpu_->ops().silu_mul(g16, u16, view(d_f.data(), rows, cols, cols)), Error);
    DeviceBuffer d_o(*gpu_, rows * cols * 2, "other");
    const DType other = dt == DType::BF16 ? DType::F16 : DType::BF16;
    EXPECT_THROW(gpu_->ops().silu_mul(g16, u16, view(d_o.data(), rows, cols, cols, other)), Error);
    EXPECT_THROW(gpu_->ops().silu_mul(g16, uv, view(d_o.data(), rows, cols, cols, dt)), Error);
  }

  // Which dtype linear() takes: F32 for F32 weights and for the GEMV's few rows.
  EXPECT_EQ(gpu_->ops().linear_input_dtype(8, DType::BF16), DType::F32);
  EXPECT_EQ(gpu_->ops().linear_input_dtype(9, DType::BF16), DType::BF16);
  EXPECT_EQ(gpu_->ops().linear_input_dtype(9, DType::F16), DType::F16);
  EXPECT_EQ(gpu_->ops().linear_input_dtype(4096, DType::F32), DType::F32);
  EXPECT_EQ(cpu_->ops().linear_input_dtype(4096, DType::BF16), DType::F32);

  // A linear of x rounded by the norm (in the ops' scratch, as the model's down_proj input, and in
  // a buffer of its own, as its q/k/v input) against the linear of the F32 x.
  for (DType dt : {DType::BF16, DType::F16})
    for (int64_t T : {9, 97}) {
      const int64_t in = 1536, out = 520;
      auto xs = random_floats(T * in, -3.0f, 3.0f), nw = random_floats(in, 0.5f, 1.5f);
      auto wm = random_floats(out * in), b = random_floats(out);
      auto d_x = upload(xs), d_nw = upload(nw), d_wm = upload(encode(wm, dt)), d_bias = upload(encode(b, dt));
      const WeightView W{d_wm.data(), dt, out, in};
      const VecView B{d_bias.data(), dt, out};
      auto d_xn = poisoned(T * in), d_ya = poisoned(T * out), d_yb = poisoned(T * out), d_yc = poisoned(T * out);
      const MatView xv = view(d_x.data(), T, in, in), xn = view(d_xn.data(), T, in, in);
      gpu_->ops().rms_norm(xv, VecView{d_nw.data(), DType::F32, in}, 1e-5f, xn);
      gpu_->ops().linear(xn, W, &B, view(d_ya.data(), T, out, out));
      DeviceBuffer d_own(*gpu_, T * in * 2, "16-bit x");
      const MatView own = view(d_own.data(), T, in, in, dt);
      gpu_->ops().rms_norm(xv, VecView{d_nw.data(), DType::F32, in}, 1e-5f, own);
      gpu_->ops().linear(own, W, &B, view(d_yb.data(), T, out, out));
      const MatView scratch = gpu_->ops().linear_input_scratch(T, in, dt);
      gpu_->ops().rms_norm(xv, VecView{d_nw.data(), DType::F32, in}, 1e-5f, scratch);
      gpu_->ops().linear(scratch, W, &B, view(d_yc.data(), T, out, out));
      const auto ya = bytes(d_ya, T * out * 4);
      EXPECT_EQ(ya, bytes(d_yb, T * out * 4)) << "linear of a 16-bit x, " << dtype_name(dt) << " T=" << T;
      EXPECT_EQ(ya, bytes(d_yc, T * out * 4)) << "linear of the scratch x, " << dtype_name(dt) << " T=" << T;
      EXPECT_FALSE(std::isnan(download(d_ya, 1)[0]));
    }
  // A linear of a 16-bit x into a 16-bit y (the prefill's gate/up): the F32 y rounded once. cuBLASLt
  // may pick another kernel for the other output dtype, whose fp32 sums then differ by up to
  // dot_tolerance(in, sum of |terms|): within that plus half a 16-bit ulp of the F32 y.
  for (DType dt : {DType::BF16, DType::F16})
    for (int64_t T : {9, 300}) {
      const int64_t in = 1536, out = 520;
      auto xs = random_floats(T * in, -1.0f, 1.0f), wm = random_floats(out * in, -0.1f, 0.1f);
      auto d_x16 = upload(encode(xs, dt)), d_wm = upload(encode(wm, dt));
      const WeightView W{d_wm.data(), dt, out, in};
      const MatView x16 = view(d_x16.data(), T, in, in, dt);
      auto d_y32 = poisoned(T * out), d_back = poisoned(T * out);
      gpu_->ops().linear(x16, W, nullptr, view(d_y32.data(), T, out, out));
      DeviceBuffer d_y16(*gpu_, T * out * 2, "y16");
      const MatView y16 = view(d_y16.data(), T, out, out, dt);
      gpu_->ops().linear(x16, W, nullptr, y16);
      gpu_->ops().copy(y16, view(d_back.data(), T, out, out));
      const auto y32 = download(d_y32, T * out), got = download(d_back, T * out);
      std::vector<double> tol(T * out);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t o = 0; o < out; ++o) {
          double abs_sum = 0;
          for (int64_t i = 0; i < in; ++i) abs_sum += std::fabs(double{xs[t * in + i]} * wm[o * in + i]);
          const double y = std::fabs(double{y32[t * out + o]});
          tol[t * out + o] = dot_tolerance(in, abs_sum) + unit_roundoff(dt) * (y + dot_tolerance(in, abs_sum));
        }
      expect_within(got, y32, tol, std::string("linear into a 16-bit y, ") + std::string(dtype_name(dt)) + " T=" + std::to_string(T));
      // With a bias, or from an F32 x, a 16-bit y is refused.
      std::vector<float> bias(out, 0.25f);
      auto d_b = upload(encode(bias, dt));
      const VecView B{d_b.data(), dt, out};
      EXPECT_THROW(gpu_->ops().linear(x16, W, &B, y16), Error);
      auto d_xf = upload(xs);
      EXPECT_THROW(gpu_->ops().linear(view(d_xf.data(), T, in, in), W, nullptr, y16), Error);
    }

  // linear_multi with accumulate (y += x W^T in the GEMM, beta = 1) against linear() then add():
  // the same fp32 sum where cuBLASLt picks the same kernel for both, else within dot_tolerance, and
  // then one rounding of the add on each side. From a 16-bit x and from an F32 x (rounded first).
  for (DType dt : {DType::BF16, DType::F16})
    for (bool x16 : {true, false}) {
      const int64_t T = 77, in = 1024, out = 384, y_ld = out + 8;
      auto xs = random_floats(T * in, -1.0f, 1.0f), wm = random_floats(out * in, -0.1f, 0.1f);
      auto y0 = random_floats(T * y_ld, -4.0f, 4.0f);
      std::vector<float> xr = xs;
      auto d_x = x16 ? upload(encode(xr, dt)) : upload(xs);
      encode(xr, dt);  // what the GEMM multiplies either way
      auto d_wm = upload(encode(wm, dt));
      const WeightView W{d_wm.data(), dt, out, in};
      const MatView xv = view(d_x.data(), T, in, in, x16 ? dt : DType::F32);
      auto d_acc = upload(y0), d_ref = upload(y0), d_prod = poisoned(T * out);
      const LinearOut acc{&W, nullptr, view(d_acc.data(), T, out, y_ld), true};
      gpu_->ops().linear_multi(xv, std::span<const LinearOut>(&acc, 1));
      gpu_->ops().linear(xv, W, nullptr, view(d_prod.data(), T, out, out));
      gpu_->ops().add(view(d_ref.data(), T, out, y_ld), view(d_prod.data(), T, out, out));
      const auto got = download(d_acc, T * y_ld), ref = download(d_ref, T * y_ld);
      std::vector<double> tol(T * y_ld, 0.0);  // the padding columns stay as they were
      for (int64_t t = 0; t < T; ++t)
        for (int64_t o = 0; o < out; ++o) {
          double abs_sum = 0;
          for (int64_t i = 0; i < in; ++i) abs_sum += std::fabs(double{xr[t * in + i]} * wm[o * in + i]);
          tol[t * y_ld + o] = dot_tolerance(in, abs_sum) + 2 * kF32Eps * std::fabs(double{ref[t * y_ld + o]});
        }
      expect_within(got, ref, tol,
                    std::string("linear accumulating into y, ") + std::string(dtype_name(dt)) + (x16 ? " x16" : " x32"));
    }
  {  // refused: a bias, a 16-bit y, F32 weights, the GEMV's few rows; and by the CPU backend
    std::vector<float> wv(64 * 32, 0.25f), xv(16 * 64, 0.5f), bv(32, 1.0f);
    auto d_w16 = upload(encode(wv, DType::BF16)), d_w32 = upload(wv), d_xs = upload(xv), d_b = upload(encode(bv, DType::BF16));
    auto d_ys = poisoned(16 * 32);
    const WeightView W16{d_w16.data(), DType::BF16, 32, 64}, W32{d_w32.data(), DType::F32, 32, 64};
    const VecView B{d_b.data(), DType::BF16, 32};
    const MatView x = view(d_xs.data(), 16, 64, 64), y = view(d_ys.data(), 16, 32, 32);
    for (const LinearOut& bad : {LinearOut{&W16, &B, y, true}, LinearOut{&W32, nullptr, y, true},
                                 LinearOut{&W16, nullptr, view(d_ys.data(), 16, 32, 32, DType::BF16), true},
                                 LinearOut{&W16, nullptr, view(d_ys.data(), 4, 32, 32), true}}) {
      const MatView xb = bad.y.rows == 4 ? x.slice_rows(0, 4) : x;
      EXPECT_THROW(gpu_->ops().linear_multi(xb, std::span<const LinearOut>(&bad, 1)), Error);
    }
    EXPECT_FALSE(gpu_->ops().linear_accumulates(8, DType::BF16));
    EXPECT_FALSE(gpu_->ops().linear_accumulates(4096, DType::F32));
    EXPECT_FALSE(cpu_->ops().linear_accumulates(4096, DType::BF16));
    std::vector<float> hx(16 * 64, 0.5f), hw(32 * 64, 0.25f), hy(16 * 32, 0.0f);
    const WeightView HW{hw.data(), DType::F32, 32, 64};
    const LinearOut host{&HW, nullptr, view(hy.data(), 16, 32, 32), true};
    EXPECT_THROW(cpu_->ops().linear_multi(view(hx.data(), 16, 64, 64), std::span<const LinearOut>(&host, 1)), Error);
  }

  // A 16-bit x of another dtype than the weights', and a 16-bit out over its own input, are refused.
  std::vector<float> half_w(64 * 8, 0.5f);
  auto d_x = poisoned(16 * 64), d_w = upload(encode(half_w, DType::BF16));
  auto d_y = poisoned(16 * 8);
  EXPECT_THROW(gpu_->ops().linear(view(d_x.data(), 16, 64, 64, DType::F16), WeightView{d_w.data(), DType::BF16, 8, 64},
                                  nullptr, view(d_y.data(), 16, 8, 8)),
               Error);
  EXPECT_THROW(gpu_->ops().silu_mul(view(d_x.data(), 16, 32, 64), view(d_x.data(), 16, 32, 64),
                                    view(d_x.data(), 16, 32, 64, DType::BF16)),
               Error);
}

// Sampling on the device against the same rule on the host (sort by value then index, weights in
// double, serial running sum): for given uniforms the same token, except where the draw lands within
// 1e-12 of a boundary of the running sum (the device's sum is a parallel scan).
TEST_F(CudaTest, SampleTokenDrawsTheHostRulesToken) {
  const int64_t n = 128256;
  std::mt19937 gen(3);
  for (float spread : {8.0f, 1.0f})
    for (auto [temp, top_k, top_p] : {std::tuple{0.7f, int64_t{0}, 0.9f}, std::tuple{1.0f, int64_t{40}, 1.0f},
                                      std::tuple{1.3f, int64_t{0}, 1.0f}, std::tuple{0.5f, int64_t{1000}, 0.5f}}) {
      std::normal_distribution<float> d(0.0f, spread);
      std::vector<float> x(n);
      for (float& v : x) v = d(gen);
      x[17] = x[4242];  // a tie: the lower index comes first
      auto d_x = upload(x);
      auto d_out = upload(std::vector<int32_t>{-1});
      // Host rule.
      std::vector<std::pair<float, int32_t>> c(n);
      for (int64_t i = 0; i < n; ++i) c[i] = {x[i] / temp, static_cast<int32_t>(i)};
      std::stable_sort(c.begin(), c.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
      const int64_t keep = top_k > 0 ? top_k : n;
      std::vector<double> cum(keep);
      double run = 0;
      for (int64_t i = 0; i < keep; ++i) cum[i] = run += std::exp(static_cast<double>(c[i].first) - c[0].first);
      int64_t m = keep;
      if (top_p < 1.0f)
        for (int64_t i = 0; i < keep; ++i)
          if (cum[i] / cum[keep - 1] >= top_p) {
            m = i + 1;
            break;
          }
      std::uniform_real_distribution<double> uni(0.0, 1.0);
      int checked = 0;
      for (int k = 0; k < 60; ++k) {
        const double uniform = uni(gen);
        const double u = uniform * cum[m - 1];
        const int64_t pick = std::upper_bound(cum.begin(), cum.begin() + m, u) - cum.begin();
        const bool near = (pick < m && std::fabs(cum[pick] - u) < 1e-12 * cum[m - 1]) ||
                          (pick > 0 && std::fabs(cum[pick - 1] - u) < 1e-12 * cum[m - 1]);
        gpu_->ops().sample_token(view(d_x.data(), 1, n, n), temp, top_k, top_p, uniform,
                                 static_cast<int32_t*>(d_out.data()));
        int32_t got = -2;
        gpu_->read_to_host(&got, d_out.data(), sizeof(got));
        if (near) continue;
        ++checked;
        ASSERT_EQ(got, c[std::min(pick, m - 1)].second) << "spread " << spread << " temp " << temp << " k " << top_k
                                                        << " p " << top_p << " uniform " << uniform;
      }
      EXPECT_GT(checked, 50);
    }
}


// The element-wise kernels take four columns a thread in 16-byte accesses where the views allow it
// and go element by element where they don't: both paths give the same bits. Each op runs on the
// same values laid out twice, rows 1504 floats apart (the vector path) and 1503 apart (the scalar
// one), into F32 and BF16 outs.
TEST_F(CudaTest, VectorAndScalarPathsAgree) {
  const int64_t rows = 7, cols = 1500;
  const auto vals = random_floats(rows * cols, -8.0f, 8.0f), vals2 = random_floats(rows * cols);
  auto laid_out = [&](const std::vector<float>& v, int64_t stride) {
    std::vector<float> out(static_cast<size_t>(rows * stride), 0.0f);
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(v.begin() + r * cols, cols, out.begin() + r * stride);
    return upload(out);
  };
  auto read = [&](const DeviceBuffer& b, size_t n) {
    std::vector<uint8_t> h(n);
    gpu_->read_to_host(h.data(), b.data(), n);
    return h;
  };
  for (DType dt : {DType::F32, DType::BF16}) {
    const size_t out_bytes = static_cast<size_t>(rows * cols) * dtype_size(dt);
    for (bool gelu : {false, true}) {
      std::vector<std::vector<uint8_t>> got;
      for (int64_t stride : {int64_t{1504}, int64_t{1503}}) {
        auto g = laid_out(vals, stride), u = laid_out(vals2, stride);
        DeviceBuffer o(*gpu_, out_bytes, "activation out");
        const MatView gv = view(g.data(), rows, cols, stride), uv = view(u.data(), rows, cols, stride);
        const MatView ov = view(o.data(), rows, cols, cols, dt);
        gelu ? gpu_->ops().gelu_tanh_mul(gv, uv, ov) : gpu_->ops().silu_mul(gv, uv, ov);
        got.push_back(read(o, out_bytes));
      }
      EXPECT_EQ(got[0], got[1]) << (gelu ? "gelu_tanh_mul" : "silu_mul") << " -> " << dtype_name(dt);
    }
    // copy_heads of 15 heads of 100 columns and 12 of 125 into head blocks 2000 apart (125: the
    // scalar path for both layouts).
    if (dt == DType::F32) continue;
    std::vector<std::vector<uint8_t>> got;
    for (int64_t stride : {int64_t{1504}, int64_t{1503}}) {
      auto s = laid_out(vals, stride);
      for (const int64_t d : {int64_t{100}, int64_t{125}}) {
        const int64_t H = cols / d, head_stride = 2000;
        auto o = upload(std::vector<uint16_t>(static_cast<size_t>(H * head_stride), 0));
        gpu_->ops().copy_heads(view(s.data(), rows, cols, stride), H, view(o.data(), rows, d, d, dt), head_stride);
        got.push_back(read(o, static_cast<size_t>(H * head_stride) * 2));
      }
    }
    EXPECT_EQ(got[0], got[2]) << "copy_heads, d 100";
    EXPECT_EQ(got[1], got[3]) << "copy_heads, d 125";
  }
}

}  // namespace
}  // namespace headinfer::test
