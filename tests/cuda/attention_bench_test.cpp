// Attention timings at llama3-8b's head shape (32 q heads, 8 kv heads, head_dim 128, bf16 KV), as
// the engine calls it for a resident layer: one call for the group of all 8 kv heads (K blocks,
// then V blocks, [n_keys, 128] each, back to back), reading the layer's [T, 4096] fp32 queries. Disabled by default (it asserts nothing); scripts/gpu_check.sh runs it,
// and bench/attention/sdpa_peer.py measures PyTorch's SDPA on the same card in the same run.
//   prefill: causal, T queries against the same T keys; FLOPs 4 h d T^2 / 2 (causal half), the
//            convention PyTorch-side figures use too. The first call (cuDNN graph build) is timed
//            apart.
//   decode:  one query row against n keys for all 8 kv heads (one layer's attention), against the
//            floor of reading K and V once at the device copy bandwidth measured here.
// Host clock around back-to-back calls, synchronised by a small read (the ops' stream is private).
#include <cuda_runtime.h>

#include <chrono>
#include <cstdlib>

#include "cuda_test_util.h"

namespace headinfer::test {
namespace {

constexpr int64_t kHeads = 32, kKvHeads = 8, kDim = 128, kGroup = kHeads / kKvHeads;

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Device-to-device copy rate, bytes read plus bytes written, over a 1 GiB buffer.
double copy_bandwidth(Device& dev) {
  const size_t bytes = size_t{1} << 30;
  DeviceBuffer a(dev, bytes, "bench copy"), b(dev, bytes, "bench copy");
  cudaMemset(a.data(), 1, bytes);
  cudaDeviceSynchronize();
  cudaMemcpy(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice);
  cudaDeviceSynchronize();
  const int iters = 10;
  const auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i) cudaMemcpy(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice);
  cudaDeviceSynchronize();
  return 2.0 * bytes * iters / since(t0);
}

struct Layer {
  DeviceBuffer q, out, lse;  // F32 [T, 4096], F32 [T, 4096], F32 [T, 32]
  DeviceBuffer kv;           // BF16 [2][8][n_keys][128]: the group's K blocks, then its V blocks
};

class AttentionBench : public CudaTest {
 protected:
  Layer make_layer(int64_t T, int64_t n_keys) {
    Layer L;
    auto q = random_floats(T * kHeads * kDim, -2.0f, 2.0f);
    L.q = upload(q);
    L.out = DeviceBuffer(*gpu_, T * kHeads * kDim * 4, "bench out");
    L.lse = DeviceBuffer(*gpu_, T * kHeads * 4, "bench lse");
    auto kv = random_floats(2 * kKvHeads * n_keys * kDim);
    L.kv = upload(encode(kv, DType::BF16));
    return L;
  }

  void run_layer(Layer& L, int64_t T, int64_t n_keys) {
    AttentionArgs a;
    const int64_t block = n_keys * kDim;  // elements from one head's K to the next's
    a.q = view(L.q.data(), T, kHeads * kDim, kHeads * kDim);
    a.kv = KvHeadView{L.kv.data(), L.kv.as<uint16_t>() + kKvHeads * block, DType::BF16, kDim};
    a.n_keys = n_keys;
    a.head_dim = kDim;
    a.n_q_heads = kGroup;
    a.n_kv_heads = kKvHeads;
    a.kv_head_stride = block;
    a.q_pos0 = n_keys - T;
    a.scale = 0.08838834764831845f;
    a.out = view(L.out.data(), T, kHeads * kDim, kHeads * kDim);
    a.lse = view(L.lse.data(), T, kHeads, kHeads);
    gpu_->ops().attention(a);
  }

  void sync(const Layer& L) {
    float sink = 0;
    gpu_->read_to_host(&sink, L.lse.data(), sizeof(float));
  }
};

TEST_F(AttentionBench, DISABLED_Attention) {
  const double bw = copy_bandwidth(*gpu_);
  std::printf("[bench] device copy: %.0f GB/s (read + write)\n", bw / 1e9);

  std::vector<int64_t> lengths{4096, 16384, 32768};
  if (std::getenv("HEADINFER_BENCH_LONG") != nullptr) lengths.push_back(131072);
  for (int64_t T : lengths) {
    Layer L = make_layer(T, T);
    auto t0 = Clock::now();
    run_layer(L, T, T);
    sync(L);
    const double first = since(t0);
    const int iters = T <= 4096 ? 20 : T <= 32768 ? 5 : 2;
    t0 = Clock::now();
    for (int i = 0; i < iters; ++i) run_layer(L, T, T);
    sync(L);
    const double s = since(t0) / iters;
    const double flops = 4.0 * kHeads * kDim * 0.5 * static_cast<double>(T) * static_cast<double>(T);
    std::printf("[bench] prefill attention T=%ld (32/8 heads, d 128, bf16 KV, causal): %.3f ms/layer, "
                "%.1f TFLOP/s; first call (graph build) %.1f ms\n",
                T, s * 1e3, flops / s / 1e12, first * 1e3);
  }

  for (int64_t n : {int64_t{8192}, int64_t{32768}, int64_t{131072}}) {
    Layer L = make_layer(1, n);
    run_layer(L, 1, n);
    sync(L);
    const int iters = 200;
    const auto t0 = Clock::now();
    for (int i = 0; i < iters; ++i) run_layer(L, 1, n);
    sync(L);
    const double s = since(t0) / iters;
    const double bytes = 2.0 * kKvHeads * static_cast<double>(n) * kDim * 2;
    // The floor reads K and V once at the copy's rate (bytes read plus written per second).
    const double floor_s = bytes / bw;
    std::printf("[bench] decode attention keys=%ld (8 kv heads x 4 q heads, d 128, bf16 KV, one call): %.1f "
                "us/layer, %.0f GB/s of KV; floor %.1f us/layer\n",
                n, s * 1e6, bytes / s / 1e9, floor_s * 1e6);
  }
  // Launch floor: a decode call over 64 keys is one small kernel; what it costs per call is the
  // host's launch rate, which bounds any per-call figure above from below.
  {
    Layer L = make_layer(1, 64);
    run_layer(L, 1, 64);
    sync(L);
    const int iters = 400;
    const auto t0 = Clock::now();
    for (int i = 0; i < iters; ++i) run_layer(L, 1, 64);
    sync(L);
    std::printf("[bench] decode attention keys=64 (launch floor): %.1f us per layer call\n", since(t0) / iters * 1e6);
  }
}

}  // namespace
}  // namespace headinfer::test
