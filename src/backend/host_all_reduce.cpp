#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "headinfer/all_reduce.h"
#include "headinfer/error.h"

namespace headinfer {
namespace {

class HostAllReduce final : public AllReduce {
 public:
  explicit HostAllReduce(int n_ranks) : n_ranks_(n_ranks), slots_(static_cast<size_t>(n_ranks)), sums_(slots_.size()) {}

  int n_ranks() const override { return n_ranks_; }

  void sum(int rank, Device& device, const MatView& partial) override {
    if (rank < 0 || rank >= n_ranks_)
      throw Error("all-reduce: rank " + std::to_string(rank) + " of " + std::to_string(n_ranks_));
    if (partial.dtype != DType::F32) throw Error("all-reduce: partials must be F32");
    const auto r = static_cast<size_t>(rank);
    const auto row_elems = static_cast<size_t>(partial.cols);
    const size_t elems = static_cast<size_t>(partial.rows) * row_elems;
    // Only rank r writes slot r before the first barrier; all read every slot between the barriers.
    std::vector<float>& slot = slots_[r];
    if (slot.size() < elems) slot.resize(elems);
    copy_rows(partial, [&](int64_t i, void* row) { device.read_to_host(slot.data() + i * row_elems, row, row_elems * 4); });
    wait_all();
    std::vector<float>& acc = sums_[r];
    if (acc.size() < elems) acc.resize(elems);
    std::memcpy(acc.data(), slots_[0].data(), elems * sizeof(float));
    for (size_t rr = 1; rr < slots_.size(); ++rr) {
      const float* p = slots_[rr].data();
      for (size_t i = 0; i < elems; ++i) acc[i] += p[i];
    }
    wait_all();  // no rank refills its slot before every rank has read them all
    copy_rows(partial, [&](int64_t i, void* row) { device.write_from_host(row, acc.data() + i * row_elems, row_elems * 4); });
  }

  void abort() override {
    std::lock_guard lock(mu_);
    aborted_ = true;
    cv_.notify_all();
  }

  void reset() override {
    std::lock_guard lock(mu_);
    aborted_ = false;
    arrived_ = 0;
  }

 private:
  // Row by row: a partial may be a row slice of a wider buffer (row_stride > cols).
  template <typename F>
  static void copy_rows(const MatView& m, F&& f) {
    for (int64_t i = 0; i < m.rows; ++i) f(i, m.row<float>(i));
  }

  // A reusable barrier: the last rank to arrive starts the next generation.
  void wait_all() {
    std::unique_lock lock(mu_);
    if (aborted_) throw Error("all-reduce aborted: another shard failed");
    const uint64_t gen = generation_;
    if (++arrived_ == n_ranks_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != gen || aborted_; });
    if (generation_ == gen) throw Error("all-reduce aborted: another shard failed");
  }

  const int n_ranks_;
  std::vector<std::vector<float>> slots_;  // F32 [rows * cols] per rank: its partial, on the host
  std::vector<std::vector<float>> sums_;   // F32 [rows * cols] per rank: the sum it writes back
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  bool aborted_ = false;
};

}  // namespace

std::unique_ptr<AllReduce> make_host_all_reduce(int n_ranks) {
  if (n_ranks < 1) throw Error("all-reduce: " + std::to_string(n_ranks) + " ranks (at least 1)");
  return std::make_unique<HostAllReduce>(n_ranks);
}

}  // namespace headinfer
