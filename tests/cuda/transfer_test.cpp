// The CUDA Transfer: copies on the copy streams are ordered with the device's ops only by events
// (a missing wait shows up as stale data, since every round uses fresh values), the pinned host
// tier keeps its budget, and the link bandwidth of the copy streams against plain cudaMemcpyAsync.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>

#include "cuda_test_util.h"
#include "headinfer/error.h"
#include "headinfer/transfer.h"

namespace headinfer::test {
namespace {

// One pipeline round per host buffer: h2d into A, compute copies A to B (an op on the device's
// stream), d2h brings B home; the three streams are chained by re-recorded events only.
TEST_F(CudaTest, CopyStreamsOrderedByEventsOnly) {
  auto transfer = gpu_->make_transfer({});
  auto h2d = transfer->make_copy_stream("h2d");
  auto d2h = transfer->make_copy_stream("d2h");
  Stream& compute = transfer->compute_stream();
  auto ready = transfer->make_event();
  auto done = transfer->make_event();
  auto free = transfer->make_event();
  EXPECT_TRUE(ready->done());  // never recorded

  // A 2-D region like a group fetch: `rows` rows of `cols` floats inside rows of `pitch` floats.
  const int64_t rows = 37, cols = 24001, pitch = 30011;
  const size_t region = static_cast<size_t>(rows * pitch) * sizeof(float);
  constexpr int kRounds = 6;
  std::vector<float*> in(kRounds), out(kRounds);
  for (int i = 0; i < kRounds; ++i) {
    in[i] = static_cast<float*>(transfer->alloc_host(region, "test input"));
    out[i] = static_cast<float*>(transfer->alloc_host(region, "test output"));
    const auto v = random_floats(static_cast<size_t>(rows * pitch));
    std::memcpy(in[i], v.data(), region);
    std::fill(out[i], out[i] + rows * pitch, std::nanf(""));
  }
  DeviceBuffer a(*gpu_, region, "A"), b(*gpu_, region, "B");
  const size_t pitch_bytes = static_cast<size_t>(pitch) * sizeof(float), row_bytes = static_cast<size_t>(cols) * 4;
  for (int i = 0; i < kRounds; ++i) {
    h2d->wait(*free);
    h2d->copy_2d(a.data(), pitch_bytes, in[i], pitch_bytes, row_bytes, static_cast<size_t>(rows));
    h2d->record(*ready);
    compute.wait(*ready);
    gpu_->ops().copy(view(a.data(), rows, cols, pitch), view(b.data(), rows, cols, pitch));
    compute.record(*done);
    d2h->wait(*done);
    d2h->copy_2d(out[i], pitch_bytes, b.data(), pitch_bytes, row_bytes, static_cast<size_t>(rows));
    d2h->record(*free);
  }
  free->synchronize();
  EXPECT_TRUE(free->done());
  for (int i = 0; i < kRounds; ++i) {
    size_t bad = 0;
    for (int64_t r = 0; r < rows; ++r)
      bad += std::memcmp(in[i] + r * pitch, out[i] + r * pitch, row_bytes) != 0;
    EXPECT_EQ(bad, 0u) << "round " << i << ": rows differ";
    transfer->free_host(in[i]);
    transfer->free_host(out[i]);
  }
  EXPECT_EQ(transfer->host_bytes_in_use(), 0u);
  EXPECT_EQ(transfer->host_peak_bytes(), 2 * kRounds * region);
}

TEST_F(CudaTest, PinnedHostTierKeepsItsBudget) {
  TransferOptions o;
  o.host_budget = size_t{3} << 20;
  auto transfer = gpu_->make_transfer(o);
  void* p = transfer->alloc_host(size_t{2} << 20, "first");
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, p), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeHost) << "host tier is not pinned";
  try {
    transfer->alloc_host(size_t{2} << 20, "second");
    ADD_FAILURE() << "no error past the host budget";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("host memory budget"), std::string::npos) << e.what();
  }
  EXPECT_EQ(transfer->host_bytes_in_use(), size_t{2} << 20);
  transfer->free_host(p);
  EXPECT_EQ(transfer->host_bytes_in_use(), 0u);
}

// Median seconds of `reps` runs of f (each ends with a synchronize).
double median_seconds(int reps, const std::function<void()>& f) {
  std::vector<double> t;
  f();  // warm-up: first touch of pages and the copy engines
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// The link, as the offload ring sees it: the Transfer's copy streams from its pinned host tier
// against plain cudaMemcpyAsync of the same bytes (pinned and pageable) on a stream of its own.
TEST_F(CudaTest, LinkBandwidthReport) {
  cudaDeviceProp prop{};
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  const size_t bytes = size_t{256} << 20;
  const int reps = 7;
  auto transfer = gpu_->make_transfer({});
  auto h2d = transfer->make_copy_stream("h2d");
  auto d2h = transfer->make_copy_stream("d2h");
  void* pinned = transfer->alloc_host(bytes, "bench");
  void* pinned2 = transfer->alloc_host(bytes, "bench");
  std::memset(pinned, 1, bytes);
  std::memset(pinned2, 2, bytes);
  std::vector<char> pageable(bytes, 3);
  DeviceBuffer dev(*gpu_, bytes, "bench"), dev2(*gpu_, bytes, "bench");
  cudaStream_t plain = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&plain, cudaStreamNonBlocking), cudaSuccess);
  auto gbps = [&](double s, size_t n = 0) { return static_cast<double>(n == 0 ? bytes : n) / s / 1e9; };

  const double h2d_1d = gbps(median_seconds(reps, [&] {
    h2d->copy_2d(dev.data(), bytes, pinned, bytes, bytes, 1);
    h2d->synchronize();
  }));
  // A group fetch at long context: 16 rows (K and V of 8 heads) of 16 MiB (64K positions of a
  // 128-dim bf16 head) inside blocks of 32 MiB capacity, 256 MiB in all.
  const size_t row = size_t{16} << 20, rows = 16;
  void* host_blocks = transfer->alloc_host(rows * 2 * row, "bench");
  std::memset(host_blocks, 4, rows * 2 * row);
  DeviceBuffer dev_blocks(*gpu_, rows * 2 * row, "bench");
  const double h2d_2d = gbps(median_seconds(reps, [&] {
    h2d->copy_2d(dev_blocks.data(), 2 * row, host_blocks, 2 * row, row, rows);
    h2d->synchronize();
  }));
  const double plain_pinned = gbps(median_seconds(reps, [&] {
    ASSERT_EQ(cudaMemcpyAsync(dev.data(), pinned, bytes, cudaMemcpyHostToDevice, plain), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(plain), cudaSuccess);
  }));
  const double plain_pageable = gbps(median_seconds(3, [&] {
    ASSERT_EQ(cudaMemcpyAsync(dev.data(), pageable.data(), bytes, cudaMemcpyHostToDevice, plain), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(plain), cudaSuccess);
  }));
  const double d2h_1d = gbps(median_seconds(reps, [&] {
    d2h->copy_2d(pinned2, bytes, dev2.data(), bytes, bytes, 1);
    d2h->synchronize();
  }));
  // Fetch and write-back at once, as the ring runs them: both directions of the link.
  const double both = gbps(median_seconds(reps, [&] {
    h2d->copy_2d(dev.data(), bytes, pinned, bytes, bytes, 1);
    d2h->copy_2d(pinned2, bytes, dev2.data(), bytes, bytes, 1);
    h2d->synchronize();
    d2h->synchronize();
  }), 2 * bytes);
  const double probe = measure_copy_gbps(*transfer, *gpu_, size_t{64} << 20);

  std::printf("[bench] card %s; 256 MiB per copy, median of %d\n", prop.name, reps);
  std::printf("[bench] h2d copy stream, pinned, 1-D          %6.1f GB/s\n", h2d_1d);
  std::printf("[bench] h2d copy stream, pinned, 2-D 16x16MiB %6.1f GB/s\n", h2d_2d);
  std::printf("[bench] h2d plain cudaMemcpyAsync, pinned     %6.1f GB/s\n", plain_pinned);
  std::printf("[bench] h2d plain cudaMemcpyAsync, pageable   %6.1f GB/s\n", plain_pageable);
  std::printf("[bench] d2h copy stream, pinned               %6.1f GB/s\n", d2h_1d);
  std::printf("[bench] h2d + d2h at once (both streams)      %6.1f GB/s total\n", both);
  std::printf("[bench] measure_copy_gbps (planner probe, 64 MiB, one shot) %6.1f GB/s\n", probe);
  // The copy stream issues the same DMA as a plain pinned cudaMemcpyAsync.
  EXPECT_GT(h2d_1d, 0.85 * plain_pinned);
  EXPECT_GT(h2d_2d, 0.85 * plain_pinned);

  cudaStreamDestroy(plain);
  transfer->free_host(pinned);
  transfer->free_host(pinned2);
  transfer->free_host(host_blocks);
}

}  // namespace
}  // namespace headinfer::test
