// The CPU Transfer: each copy stream is a worker thread draining a fixed-size command ring (a
// stand-in for a GPU copy engine); the compute stream is the calling thread, because CPU ops run
// synchronously. Events carry a record counter and a completion counter, so one event object can
// be recorded again and again (as cudaEventRecord allows) without allocating.
#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "headinfer/backend.h"
#include "headinfer/error.h"
#include "headinfer/transfer.h"
#include "../budgeted_pool.h"

namespace headinfer {
namespace {

class CpuEvent final : public Event {
 public:
  bool done() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return completed_ >= recorded_;
  }
  void synchronize() override { wait_for(snapshot()); }

  // The sequence number a wait enqueued now has to reach.
  uint64_t snapshot() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return recorded_;
  }
  uint64_t begin_record() {
    std::lock_guard<std::mutex> lock(mutex_);
    return ++recorded_;
  }
  void complete(uint64_t seq) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      completed_ = std::max(completed_, seq);
    }
    cv_.notify_all();
  }
  void wait_for(uint64_t seq) const {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return completed_ >= seq; });
  }

 private:
  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  uint64_t recorded_ = 0;
  uint64_t completed_ = 0;
};

CpuEvent& cpu_event(const Event& e) { return const_cast<CpuEvent&>(static_cast<const CpuEvent&>(e)); }

// Plain memcpy per row; rows of equal pitch and width collapse into one memcpy.
void copy_rows(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes, size_t rows) {
  if (rows == 0 || row_bytes == 0) return;
  if (dst_pitch == row_bytes && src_pitch == row_bytes) {
    std::memcpy(dst, src, row_bytes * rows);
    return;
  }
  for (size_t r = 0; r < rows; ++r)
    std::memcpy(static_cast<char*>(dst) + r * dst_pitch, static_cast<const char*>(src) + r * src_pitch, row_bytes);
}

// The compute stream of a synchronous device: everything enqueued has already happened.
class CpuComputeStream final : public Stream {
 public:
  void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes,
               size_t rows) override {
    copy_rows(dst, dst_pitch, src, src_pitch, row_bytes, rows);
  }
  void record(Event& event) override {
    CpuEvent& e = cpu_event(event);
    e.complete(e.begin_record());
  }
  void wait(const Event& event) override {
    const CpuEvent& e = cpu_event(event);
    e.wait_for(e.snapshot());
  }
  void synchronize() override {}
};

class CpuCopyStream final : public Stream {
 public:
  CpuCopyStream(int jitter_us, uint64_t seed) : jitter_us_(jitter_us), rng_(seed | 1) {
    worker_ = std::thread([this] { run(); });
  }
  ~CpuCopyStream() override {
    synchronize();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes,
               size_t rows) override {
    Command c;
    c.kind = Kind::Copy;
    c.dst = dst;
    c.src = src;
    c.dst_pitch = dst_pitch;
    c.src_pitch = src_pitch;
    c.row_bytes = row_bytes;
    c.rows = rows;
    push(c);
  }
  void record(Event& event) override {
    CpuEvent& e = cpu_event(event);
    Command c;
    c.kind = Kind::Signal;
    c.event = &e;
    c.seq = e.begin_record();
    push(c);
  }
  void wait(const Event& event) override {
    CpuEvent& e = cpu_event(event);
    Command c;
    c.kind = Kind::Wait;
    c.event = &e;
    c.seq = e.snapshot();
    push(c);
  }
  void synchronize() override {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint64_t target = pushed_;
    cv_.wait(lock, [&] { return finished_ >= target; });
  }
  void host_task(void (*fn)(void*), void* arg) override {
    Command c;
    c.kind = Kind::HostTask;
    c.fn = fn;
    c.arg = arg;
    push(c);
  }

 private:
  enum class Kind { Copy, Signal, Wait, HostTask };
  struct Command {
    Kind kind = Kind::Copy;
    void* dst = nullptr;
    const void* src = nullptr;
    size_t dst_pitch = 0, src_pitch = 0, row_bytes = 0, rows = 0;
    CpuEvent* event = nullptr;
    uint64_t seq = 0;
    void (*fn)(void*) = nullptr;
    void* arg = nullptr;
  };
  // Fixed ring: enqueueing never allocates; a full ring makes the producer wait (as a full CUDA
  // launch queue does).
  static constexpr size_t kRing = 1024;

  void push(const Command& c) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return pushed_ - finished_ < kRing; });
    ring_[pushed_ % kRing] = c;
    ++pushed_;
    cv_.notify_all();
  }

  void run() {
    for (;;) {
      Command c;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return stop_ || taken_ < pushed_; });
        if (taken_ == pushed_) return;  // stop_ with an empty queue
        c = ring_[taken_ % kRing];
        ++taken_;
      }
      execute(c);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        ++finished_;
      }
      cv_.notify_all();
    }
  }

  void execute(const Command& c) {
    switch (c.kind) {
      case Kind::Copy:
        if (jitter_us_ > 0) {
          rng_ ^= rng_ << 13;  // xorshift64: per-stream, no shared state
          rng_ ^= rng_ >> 7;
          rng_ ^= rng_ << 17;
          std::this_thread::sleep_for(std::chrono::microseconds(rng_ % static_cast<uint64_t>(jitter_us_ + 1)));
        }
        copy_rows(c.dst, c.dst_pitch, c.src, c.src_pitch, c.row_bytes, c.rows);
        break;
      case Kind::Signal:
        c.event->complete(c.seq);
        break;
      case Kind::Wait:
        c.event->wait_for(c.seq);
        break;
      case Kind::HostTask:
        c.fn(c.arg);
        break;
    }
  }

  const int jitter_us_;
  uint64_t rng_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::array<Command, kRing> ring_{};
  uint64_t pushed_ = 0;    // commands enqueued
  uint64_t taken_ = 0;     // commands the worker has started
  uint64_t finished_ = 0;  // commands the worker has completed
  bool stop_ = false;
  std::thread worker_;
};

class CpuTransfer final : public Transfer {
 public:
  explicit CpuTransfer(const CpuTransferOptions& o)
      : options_(o), host_(o.host_budget, "host memory", "raise --host-mem or lower --ctx", o.host_alloc_fail_after) {}
  ~CpuTransfer() override {
    host_.release_all([](void* p) { std::free(p); });
  }

  Stream& compute_stream() override { return compute_; }
  std::unique_ptr<Stream> make_copy_stream(const char*) override {
    return std::make_unique<CpuCopyStream>(options_.copy_jitter_us, options_.jitter_seed + n_streams_++);
  }
  std::unique_ptr<Event> make_event() override { return std::make_unique<CpuEvent>(); }

  void* alloc_host(size_t bytes, const char* what) override {
    return host_.allocate(bytes, what, [&](size_t n) { return aligned_host_alloc(n, what); });
  }
  void free_host(void* p) override {
    host_.release(p, [](void* q) { std::free(q); });
  }
  size_t host_bytes_in_use() const override { return host_.in_use(); }
  size_t host_peak_bytes() const override { return host_.peak(); }
  size_t host_budget() const override { return options_.host_budget; }

 private:
  const CpuTransferOptions options_;
  CpuComputeStream compute_;
  uint64_t n_streams_ = 0;
  BudgetedPool host_;
};

}  // namespace

std::unique_ptr<Transfer> make_cpu_transfer(const CpuTransferOptions& options) {
  return std::make_unique<CpuTransfer>(options);
}

double measure_copy_gbps(Transfer& transfer, Device& device, size_t bytes) {
  // Host source and device destination: the direction that feeds the ring.
  void* host = transfer.alloc_host(bytes, "link bandwidth probe");
  DeviceBuffer dev(device, bytes, "link bandwidth probe");
  std::memset(host, 1, bytes);  // touch the pages so the probe times the copy, not page faults
  auto stream = transfer.make_copy_stream("probe");
  stream->copy_2d(dev.data(), bytes, host, bytes, bytes, 1);  // warm-up: first touch of the destination
  stream->synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  stream->copy_2d(dev.data(), bytes, host, bytes, bytes, 1);
  stream->synchronize();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  transfer.free_host(host);
  return s > 0 ? static_cast<double>(bytes) / s / 1e9 : 0.0;
}

}  // namespace headinfer
