// The CPU "device": host memory with a byte budget, so that code written against Device (and
// tests of the memory cap) behave on the CPU as they will on a GPU.
#include <cstdlib>
#include <cstring>
#include <thread>

#include "../budgeted_pool.h"
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
        memory_(o.memory_budget, "device memory", "", o.alloc_fail_after) {}
  ~CpuDevice() override {
    memory_.release_all([](void* p) { std::free(p); });
  }

  std::string name() const override { return "cpu (" + std::to_string(pool_.size()) + " threads)"; }
  Ops& ops() override { return ops_; }

  void* alloc(size_t bytes, const char* what) override {
    return memory_.allocate(bytes, what, [&](size_t n) { return aligned_host_alloc(n, what); });
  }
  void free(void* p) override {
    memory_.release(p, [](void* q) { std::free(q); });
  }
  size_t bytes_in_use() const override { return memory_.in_use(); }
  size_t peak_bytes() const override { return memory_.peak(); }
  void read_to_host(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void write_from_host(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  size_t memory_budget() const override { return memory_.budget(); }
  std::unique_ptr<Transfer> make_transfer(const TransferOptions& options) override {
    return make_cpu_transfer(options);
  }
  // The CPU attention is the fp32 reference: its KV stays F32 whatever the weights are.
  DType kv_dtype(DType) const override { return DType::F32; }

 private:
  cpu::ThreadPool pool_;
  cpu::CpuOps ops_;
  BudgetedPool memory_;
};

}  // namespace

std::unique_ptr<Device> make_cpu_device(const CpuDeviceOptions& options) {
  return std::make_unique<CpuDevice>(options);
}

}  // namespace headinfer
