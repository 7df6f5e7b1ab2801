// The CPU "device": host memory with a byte budget, so that code written against Device (and
// tests of the memory cap) behave on the CPU as they will on a GPU.
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "cpu_ops.h"
#include "headinfer/error.h"
#include "headinfer/transfer.h"

namespace headinfer {
namespace {

class CpuDevice final : public Device {
 public:
  explicit CpuDevice(const CpuDeviceOptions& o)
      : pool_(o.n_threads > 0 ? o.n_threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))),
        ops_(pool_),
        budget_(o.memory_budget) {}
  ~CpuDevice() override {
    for (auto& [p, n] : sizes_) std::free(p);
  }

  std::string name() const override { return "cpu (" + std::to_string(pool_.size()) + " threads)"; }
  Ops& ops() override { return ops_; }

  void* alloc(size_t bytes, const char* what) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (budget_ != 0 && in_use_ + bytes > budget_)
      throw Error(std::string("device memory budget exceeded allocating ") + what + ": " + std::to_string(bytes) +
                  " bytes requested, " + std::to_string(budget_ - in_use_) + " of " + std::to_string(budget_) +
                  " left");
    const size_t rounded = ((bytes + 63) / 64) * 64;
    void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
    if (p == nullptr) throw Error(std::string("out of host memory allocating ") + what);
    sizes_[p] = bytes;
    in_use_ += bytes;
    peak_ = std::max(peak_, in_use_);
    return p;
  }

  void free(void* p) override {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = sizes_.find(p);
    if (it == sizes_.end()) return;
    in_use_ -= it->second;
    sizes_.erase(it);
    std::free(p);
  }

  size_t bytes_in_use() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return in_use_;
  }
  size_t peak_bytes() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return peak_;
  }
  void read_to_host(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void write_from_host(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  size_t memory_budget() const override { return budget_; }
  std::unique_ptr<Transfer> make_transfer(const TransferOptions& options) override {
    return make_cpu_transfer(options);
  }
  // The CPU attention is the fp32 reference: its KV stays F32 whatever the weights are.
  DType kv_dtype(DType) const override { return DType::F32; }

 private:
  cpu::ThreadPool pool_;
  cpu::CpuOps ops_;
  size_t budget_;
  mutable std::mutex mutex_;
  std::unordered_map<void*, size_t> sizes_;
  size_t in_use_ = 0;
  size_t peak_ = 0;
};

}  // namespace

std::unique_ptr<Device> make_cpu_device(const CpuDeviceOptions& options) {
  return std::make_unique<CpuDevice>(options);
}

}  // namespace headinfer
