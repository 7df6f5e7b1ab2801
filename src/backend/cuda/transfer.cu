// The CUDA Transfer: the pipeline's streams, events and host tier on one GPU.
//
// - compute_stream() wraps the device's own op stream (not owned), so the pipeline's waits and
//   records order the ops the device enqueues.
// - Each copy stream is its own non-blocking cudaStream_t: the offload cache makes one for fetches
//   (host -> device) and one for write-backs (device -> host), so the two directions use both copy
//   engines and neither queues behind the other.
// - Events are timing-free cudaEvents; Stream::wait is cudaStreamWaitEvent, so no host thread
//   blocks inside the layer loop.
// - The host tier is pinned (cudaHostAlloc), which cudaMemcpy2DAsync needs to run asynchronously
//   at link speed; pageable memory would be staged through a driver buffer synchronously.
//
// The HeadStore pins the host tier in slabs as the context reaches them (HeadStore::reserve, at
//   slab boundaries inside the token loop, before the copies that name the slab are queued), so a
//   short prompt at a long --ctx pays the pinning time (about 0.5 s per GiB) of its first slabs
//   only. Slabs are freed (cudaFreeHost, which waits for copies reading them) only at teardown.
#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>

#include "../budgeted_pool.h"
#include "cuda_common.h"
#include "cuda_transfer.h"
#include "headinfer/transfer.h"

namespace headinfer::cuda {
namespace {

class CudaEvent final : public Event {
 public:
  explicit CudaEvent(int ordinal) {
    HEADINFER_CUDA_CHECK(cudaSetDevice(ordinal));
    HEADINFER_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
  }
  ~CudaEvent() override { cudaEventDestroy(event_); }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  bool done() const override {
    const cudaError_t e = cudaEventQuery(event_);
    if (e == cudaErrorNotReady) return false;
    HEADINFER_CUDA_CHECK(e);
    return true;
  }
  void synchronize() override { HEADINFER_CUDA_CHECK(cudaEventSynchronize(event_)); }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

cudaEvent_t cuda_event(const Event& e) { return static_cast<const CudaEvent&>(e).get(); }

class CudaStream final : public Stream {
 public:
  // owned: the stream is created here and destroyed with this object; otherwise it is borrowed.
  CudaStream(cudaStream_t stream, bool owned, size_t max_pitch) : stream_(stream), owned_(owned), max_pitch_(max_pitch) {}
  ~CudaStream() override {
    if (!owned_) return;
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;

  void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes,
               size_t rows) override {
    if (rows == 0 || row_bytes == 0) return;
    // cudaMemcpyDefault: unified addressing tells host from device, so one call serves both
    // directions and device-to-device (ring slots).
    if (rows == 1) {
      HEADINFER_CUDA_CHECK(cudaMemcpyAsync(dst, src, row_bytes, cudaMemcpyDefault, stream_));
      return;
    }
    if (dst_pitch <= max_pitch_ && src_pitch <= max_pitch_) {
      HEADINFER_CUDA_CHECK(
          cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, row_bytes, rows, cudaMemcpyDefault, stream_));
      return;
    }
    // Head blocks of a very long context can exceed the driver's largest 2-D pitch: copy per row.
    for (size_t r = 0; r < rows; ++r)
      HEADINFER_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + r * dst_pitch,
                                           static_cast<const char*>(src) + r * src_pitch, row_bytes,
                                           cudaMemcpyDefault, stream_));
  }
  void record(Event& event) override { HEADINFER_CUDA_CHECK(cudaEventRecord(cuda_event(event), stream_)); }
  void wait(const Event& event) override { HEADINFER_CUDA_CHECK(cudaStreamWaitEvent(stream_, cuda_event(event), 0)); }
  void synchronize() override { HEADINFER_CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  // Runs on the driver's callback thread in stream order, so the host attention of hybrid decode
  // is ordered by the same events as the copies around it and the caller never blocks.
  void host_task(void (*fn)(void*), void* arg) override { HEADINFER_CUDA_CHECK(cudaLaunchHostFunc(stream_, fn, arg)); }

 private:
  cudaStream_t stream_;
  bool owned_;
  size_t max_pitch_;
};

class CudaTransfer final : public Transfer {
 public:
  CudaTransfer(int ordinal, cudaStream_t compute, const TransferOptions& options)
      : ordinal_(ordinal),
        options_(options),
        max_pitch_(query_max_pitch(ordinal)),
        compute_(compute, false, max_pitch_),
        host_(options.host_budget, "host memory", "raise --host-mem or lower --ctx", options.host_alloc_fail_after) {}
  ~CudaTransfer() override {
    cudaSetDevice(ordinal_);
    host_.release_all([](void* p) { cudaFreeHost(p); });
  }

  Stream& compute_stream() override { return compute_; }
  std::unique_ptr<Stream> make_copy_stream(const char*) override {
    HEADINFER_CUDA_CHECK(cudaSetDevice(ordinal_));
    cudaStream_t s = nullptr;
    // Non-blocking: no implicit ordering with the legacy default stream, only the events'.
    HEADINFER_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    return std::make_unique<CudaStream>(s, true, max_pitch_);
  }
  std::unique_ptr<Event> make_event() override { return std::make_unique<CudaEvent>(ordinal_); }

  void* alloc_host(size_t bytes, const char* what) override {
    return host_.allocate(bytes, what, [&](size_t n) {
      HEADINFER_CUDA_CHECK(cudaSetDevice(ordinal_));
      void* p = nullptr;
      // Portable: pinned for every GPU of the process, so a later multi-GPU split reuses the arena.
      const cudaError_t e = cudaHostAlloc(&p, n == 0 ? 64 : n, cudaHostAllocPortable);
      if (e != cudaSuccess) {
        cudaGetLastError();
        throw Error(std::string("cudaHostAlloc of ") + std::to_string(n) + " pinned bytes for " + what +
                    " failed: " + cudaGetErrorString(e) + " (lower --ctx or --host-mem)");
      }
      return p;
    });
  }
  // cudaFreeHost waits for copies still reading p.
  void free_host(void* p) override {
    host_.release(p, [](void* q) { cudaFreeHost(q); });
  }
  size_t host_bytes_in_use() const override { return host_.in_use(); }
  size_t host_peak_bytes() const override { return host_.peak(); }
  size_t host_budget() const override { return options_.host_budget; }

 private:
  static size_t query_max_pitch(int ordinal) {
    cudaDeviceProp prop{};
    HEADINFER_CUDA_CHECK(cudaGetDeviceProperties(&prop, ordinal));
    return prop.memPitch;
  }

  const int ordinal_;
  const TransferOptions options_;
  const size_t max_pitch_;
  CudaStream compute_;
  BudgetedPool host_;
};

}  // namespace

std::unique_ptr<Transfer> make_cuda_transfer(int ordinal, cudaStream_t compute_stream, const TransferOptions& options) {
  return std::make_unique<CudaTransfer>(ordinal, compute_stream, options);
}

}  // namespace headinfer::cuda
