#pragma once
// The bookkeeping every allocator with a byte budget shares (CPU device, CUDA device, the host
// tiers of the CPU and CUDA transfers): which blocks are live and how big, bytes in use, the
// peak, and one clear error when an allocation would pass the budget. The raw allocation
// (aligned_alloc, cudaMalloc, cudaHostAlloc) stays with the caller.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>

#include "headinfer/error.h"

namespace headinfer {

// 64-byte aligned host memory (vector loads), for the CPU device and host tiers; never null.
inline void* aligned_host_alloc(size_t bytes, const char* what) {
  const size_t rounded = ((bytes + 63) / 64) * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (p == nullptr) throw Error(std::string("out of host memory allocating ") + what);
  return p;
}

class BudgetedPool {
 public:
  // `kind` names the memory in errors ("GPU memory"); `hint` ends the error ("raise --host-mem").
  // `fail_after` (a test aid, -1: never): allocations after the first fail_after are refused as
  // the system refuses them when memory runs out (an injected fault, with the same message).
  BudgetedPool(size_t budget, std::string kind, std::string hint, int64_t fail_after = -1)
      : budget_(budget), kind_(std::move(kind)), hint_(std::move(hint)), fail_after_(fail_after) {}

  // Checks the budget (0: unlimited), then calls raw(bytes), which returns the block or throws.
  template <typename Raw>
  void* allocate(size_t bytes, const char* what, Raw&& raw) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (fail_after_ >= 0 && n_allocations_ >= fail_after_)
      throw Error("out of " + kind_ + " allocating " + what + ": " + std::to_string(bytes) +
                  " bytes refused (injected after " + std::to_string(fail_after_) + " allocations)");
    ++n_allocations_;
    if (budget_ != 0 && in_use_ + bytes > budget_)
      throw Error(kind_ + " budget exceeded allocating " + what + ": " + std::to_string(bytes) + " bytes requested, " +
                  std::to_string(budget_ - in_use_) + " of " + std::to_string(budget_) + " left" +
                  (hint_.empty() ? "" : " (" + hint_ + ")"));
    void* p = raw(bytes);
    sizes_[p] = bytes;
    in_use_ += bytes;
    peak_ = std::max(peak_, in_use_);
    return p;
  }

  // Forgets p and hands it to release(p); unknown pointers are ignored.
  template <typename Release>
  void release(void* p, Release&& raw_release) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = sizes_.find(p);
    if (it == sizes_.end()) return;
    in_use_ -= it->second;
    sizes_.erase(it);
    raw_release(p);
  }

  // For destructors: releases every live block.
  template <typename Release>
  void release_all(Release&& raw_release) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [p, n] : sizes_) raw_release(p);
    sizes_.clear();
    in_use_ = 0;
  }

  size_t in_use() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return in_use_;
  }
  size_t peak() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return peak_;
  }
  size_t budget() const { return budget_; }

 private:
  const size_t budget_;
  const std::string kind_;
  const std::string hint_;
  const int64_t fail_after_;
  mutable std::mutex mutex_;
  int64_t n_allocations_ = 0;  // allocations tried, for fail_after_
  std::unordered_map<void*, size_t> sizes_;  // live block -> its requested size
  size_t in_use_ = 0;
  size_t peak_ = 0;
};

}  // namespace headinfer
