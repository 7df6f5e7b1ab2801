// Quick timings of the ops the engine's speed hangs on, reported next to their floors. Disabled by
// default (they assert nothing); scripts/gpu_check.sh runs them with --gtest_also_run_disabled_tests.
// Host clock around many back-to-back launches, synchronised by a small read at the end.
#include <chrono>

#include "cuda_test_util.h"

namespace headinfer::test {
namespace {

template <typename F>
double seconds_per_call(Device& dev, const DeviceBuffer& sync_buf, int iters, F&& f) {
  float sink = 0;
  for (int i = 0; i < 3; ++i) f();
  dev.read_to_host(&sink, sync_buf.data(), sizeof(float));
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) f();
  dev.read_to_host(&sink, sync_buf.data(), sizeof(float));
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
}

TEST_F(CudaTest, DISABLED_Bench) {
  // Decode GEMV, llama3-8b's gate_proj shape, bf16 weights: bound by reading W once.
  {
    const int64_t in = 4096, out = 14336;
    auto x = random_floats(in);
    auto w = random_floats(out * in);
    const auto wb = encode(w, DType::BF16);
    auto d_x = upload(x), d_w = upload(wb);
    DeviceBuffer d_y(*gpu_, out * 4, "y");
    const double s = seconds_per_call(*gpu_, d_y, 200, [&] {
      gpu_->ops().linear(view(d_x.data(), 1, in, in), WeightView{d_w.data(), DType::BF16, out, in}, nullptr,
                         view(d_y.data(), 1, out, out));
    });
    std::printf("[bench] linear bf16 1x%ldx%ld: %.1f us, %.0f GB/s of weights\n", in, out, s * 1e6,
                static_cast<double>(wb.size()) / s / 1e9);
  }
  // Prefill GEMM, 2048 tokens through the same weights (tensor cores, bf16 in, fp32 out).
  {
    const int64_t T = 2048, in = 4096, out = 14336;
    auto x = random_floats(T * in);
    auto w = random_floats(out * in);
    const auto wb = encode(w, DType::BF16);
    auto d_x = upload(x), d_w = upload(wb);
    DeviceBuffer d_y(*gpu_, T * out * 4, "y");
    const double s = seconds_per_call(*gpu_, d_y, 20, [&] {
      gpu_->ops().linear(view(d_x.data(), T, in, in), WeightView{d_w.data(), DType::BF16, out, in}, nullptr,
                         view(d_y.data(), T, out, out));
    });
    std::printf("[bench] linear bf16 %ldx%ldx%ld: %.1f us, %.0f TFLOP/s\n", T, in, out, s * 1e6,
                2.0 * T * in * out / s / 1e12);
  }
  // Attention: one kv head (GQA 4, head_dim 128), decode at 32K keys and a 4K causal prefill.
  for (auto [T, n_keys, kv_t] : {std::tuple{int64_t{1}, int64_t{32768}, DType::BF16},
                                 std::tuple{int64_t{1}, int64_t{32768}, DType::F32},
                                 std::tuple{int64_t{4096}, int64_t{4096}, DType::F32}}) {
    const int64_t d = 128, g = 4;
    auto q = random_floats(T * g * d);
    auto kv = random_floats(n_keys * d);
    const auto kvb = encode(kv, kv_t);
    auto d_q = upload(q), d_k = upload(kvb), d_v = upload(kvb);
    DeviceBuffer d_out(*gpu_, T * g * d * 4, "out"), d_lse(*gpu_, T * g * 4, "lse");
    AttentionArgs a;
    a.q = view(d_q.data(), T, g * d, g * d);
    a.kv = KvHeadView{d_k.data(), d_v.data(), kv_t, d};
    a.n_keys = n_keys;
    a.head_dim = d;
    a.n_q_heads = g;
    a.q_pos0 = n_keys - T;
    a.scale = 0.088f;
    a.out = view(d_out.data(), T, g * d, g * d);
    a.lse = view(d_lse.data(), T, g, g);
    const double s = seconds_per_call(*gpu_, d_lse, T == 1 ? 200 : 5, [&] { gpu_->ops().attention(a); });
    const double causal_pairs = T == 1 ? static_cast<double>(n_keys) : 0.5 * T * (T + 1);
    std::printf("[bench] attention T=%ld keys=%ld d=128 g=4 kv=%s: %.1f us, %.2f TFLOP/s, %.0f GB/s of KV\n", T,
                n_keys, std::string(dtype_name(kv_t)).c_str(), s * 1e6, 4.0 * g * d * causal_pairs / s / 1e12,
                2.0 * static_cast<double>(kvb.size()) / s / 1e9);
  }
}

}  // namespace
}  // namespace headinfer::test
