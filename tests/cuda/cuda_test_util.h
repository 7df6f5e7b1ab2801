#pragma once
// Helpers for the CUDA-vs-CPU tests: a fixture that skips without a GPU, fresh random inputs,
// uploads, and a tolerance check that reports the largest error it saw.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "headinfer/backend.h"
#include "headinfer/cuda_device.h"
#include "headinfer/dtype.h"

namespace headinfer::test {

inline constexpr double kF32Eps = 0x1p-24;   // unit roundoff of fp32
inline constexpr double kBf16Eps = 0x1p-9;   // of bf16 (8-bit significand)
inline constexpr double kF16Eps = 0x1p-11;   // of f16

inline double unit_roundoff(DType t) {
  return t == DType::F32 ? kF32Eps : t == DType::BF16 ? kBf16Eps : kF16Eps;
}

// Rounding-error bound of an n-term fp32 dot product with the sum of |terms| `abs_sum`, for two
// implementations that sum in different orders: a random-walk estimate with a 4-sigma margin plus
// a few roundings for the tree reductions, on each side.
inline double dot_tolerance(int64_t n, double abs_sum) {
  return 2.0 * kF32Eps * (4.0 * std::sqrt(static_cast<double>(n)) + 16.0) * abs_sum;
}

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU on this machine";
    gpu_ = make_cuda_device({});
    cpu_ = make_cpu_device({});
    seed_ = std::random_device{}();
    rng_.seed(seed_);
    RecordProperty("seed", std::to_string(seed_));
  }

  std::vector<float> random_floats(size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(rng_);
    return v;
  }

  // The values `v` stored as dtype `t` (little-endian bytes), and `v` rounded in place to what
  // those bytes hold, so the CPU reference sees exactly the GPU's inputs.
  static std::vector<uint8_t> encode(std::vector<float>& v, DType t) {
    std::vector<uint8_t> bytes(v.size() * dtype_size(t));
    for (size_t i = 0; i < v.size(); ++i) {
      if (t == DType::F32) {
        std::memcpy(&bytes[i * 4], &v[i], 4);
        continue;
      }
      const uint16_t h = t == DType::BF16 ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
      std::memcpy(&bytes[i * 2], &h, 2);
      v[i] = t == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
    return bytes;
  }

  DeviceBuffer upload(const void* data, size_t bytes) {
    DeviceBuffer b(*gpu_, bytes, "test input");
    gpu_->write_from_host(b.data(), data, bytes);
    return b;
  }
  template <typename T>
  DeviceBuffer upload(const std::vector<T>& v) { return upload(v.data(), v.size() * sizeof(T)); }

  // A device buffer filled with NaN, so an element the kernel forgets to write fails the check.
  DeviceBuffer poisoned(size_t n_floats) {
    std::vector<float> nan(n_floats, std::nanf(""));
    return upload(nan);
  }

  std::vector<float> download(const DeviceBuffer& b, size_t n_floats) {
    std::vector<float> v(n_floats);
    gpu_->read_to_host(v.data(), b.data(), n_floats * sizeof(float));
    return v;
  }

  std::unique_ptr<Device> gpu_;
  std::unique_ptr<Device> cpu_;
  std::mt19937 rng_;
  unsigned seed_ = 0;
};

// Element i passes when |got - ref| <= tol[i] (or both are the same infinity). Prints the largest
// error relative to its tolerance, so the log carries the margins.
inline void expect_within(const std::vector<float>& got, const std::vector<float>& ref, const std::vector<double>& tol,
                          const std::string& what) {
  ASSERT_EQ(got.size(), ref.size());
  double max_err = 0, max_ratio = 0;
  size_t bad = 0, first_bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isinf(ref[i]) && got[i] == ref[i]) continue;
    const double err = std::fabs(static_cast<double>(got[i]) - ref[i]);
    const bool ok = err <= tol[i];  // NaN fails here
    if (!ok && bad++ == 0) first_bad = i;
    if (std::isfinite(err)) {
      max_err = std::max(max_err, err);
      if (tol[i] > 0) max_ratio = std::max(max_ratio, err / tol[i]);
    }
  }
  std::printf("[max-err] %-60s max_abs=%.3e err/tol=%.3f n=%zu\n", what.c_str(), max_err, max_ratio, got.size());
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements out of tolerance; first at "
                     << first_bad << ": got " << got[first_bad] << ", ref " << ref[first_bad] << ", tol "
                     << tol[first_bad];
}

inline void expect_within(const std::vector<float>& got, const std::vector<float>& ref, double atol, double rtol,
                          const std::string& what) {
  std::vector<double> tol(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) tol[i] = atol + rtol * std::fabs(static_cast<double>(ref[i]));
  expect_within(got, ref, tol, what);
}

inline MatView view(void* data, int64_t rows, int64_t cols, int64_t stride, DType t = DType::F32) {
  return MatView{data, t, rows, cols, stride};
}

}  // namespace headinfer::test
