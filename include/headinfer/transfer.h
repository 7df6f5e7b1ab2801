#pragma once
// Asynchronous transfers between the host tier and the compute device: streams, events and host
// memory. The shape follows CUDA on purpose (cudaMemcpy2DAsync, cudaEventRecord,
// cudaStreamWaitEvent, cudaHostAlloc), so the CUDA backend implements this interface directly and
// the pipeline in kv/ is the same code on every backend.
//
// Each Device makes its own (Device::make_transfer), so the compute stream is the one its ops run on.
// The CPU implementation runs each copy stream on its own worker thread (standing in for a copy
// engine), so a missing event between a copy and the compute that reads its result is a real race
// in the CPU tests too, not something hidden by synchronous copies.
#include <cstddef>
#include <cstdint>
#include <memory>

namespace headinfer {

// Marks a point in a stream. Re-recordable: a wait sees the most recent record made before it.
class Event {
 public:
  virtual ~Event() = default;
  // True when the work before the most recent record has finished (true if never recorded).
  virtual bool done() const = 0;
  // Blocks the calling host thread until done(). For teardown and tests, not the token loop.
  virtual void synchronize() = 0;
};

// An in-order queue of work on one engine (a copy engine, or the compute device).
class Stream {
 public:
  virtual ~Stream() = default;
  // Enqueues `rows` copies of `row_bytes` bytes: row r goes from src + r*src_pitch to
  // dst + r*dst_pitch. Either side may be device or host memory of the owning Transfer.
  virtual void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes,
                       size_t rows) = 0;
  // The event completes when everything enqueued before this call has finished.
  virtual void record(Event& event) = 0;
  // Work enqueued after this call starts only once `event`'s most recent record has completed.
  // On the compute stream of a synchronous backend (the CPU) this blocks the host until then.
  virtual void wait(const Event& event) = 0;
  // Blocks the host until everything enqueued so far has finished.
  virtual void synchronize() = 0;
  // Enqueues fn(arg) to run on a host thread once everything enqueued before it has finished;
  // work enqueued after it starts once fn has returned (cudaLaunchHostFunc). fn must not enqueue
  // work itself. Hybrid decode runs host attention this way, ordered by the same events as the
  // copies around it. The default is correct for any stream but blocks the caller until the
  // stream drains; streams with their own worker (the CPU copy stream, CUDA) run it there.
  virtual void host_task(void (*fn)(void*), void* arg) {
    synchronize();
    fn(arg);
  }
};

// The transfer side of one compute device.
class Transfer {
 public:
  virtual ~Transfer() = default;
  // The stream the device's ops run on. Ops enqueued on the device (Device::ops()) are ordered
  // with this stream's copies, records and waits.
  virtual Stream& compute_stream() = 0;
  virtual std::unique_ptr<Stream> make_copy_stream(const char* name) = 0;
  virtual std::unique_ptr<Event> make_event() = 0;
  // Host-tier memory (pinned on CUDA), counted against the host budget; throws headinfer::Error
  // naming `what` when it would be exceeded.
  virtual void* alloc_host(size_t bytes, const char* what) = 0;
  virtual void free_host(void* p) = 0;
  virtual size_t host_bytes_in_use() const = 0;
  virtual size_t host_peak_bytes() const = 0;
  virtual size_t host_budget() const = 0;  // 0: unlimited
};

// What a Transfer is made with (Device::make_transfer).
struct TransferOptions {
  size_t host_budget = 0;       // bytes of host-tier memory; 0: unlimited
  // CPU test aid (other backends ignore it): each copy on a copy stream sleeps a pseudo-random
  // 0..copy_jitter_us first, so that copies finish late and a missing wait shows up as wrong numbers.
  int copy_jitter_us = 0;
  uint64_t jitter_seed = 1;
  // Test aid (CPU and CUDA): host allocations after the first n are refused, as cudaHostAlloc
  // refuses pinned memory part way through a long run; -1: never.
  int64_t host_alloc_fail_after = -1;
};
using CpuTransferOptions = TransferOptions;
// The CPU device's transfer (what CpuDevice::make_transfer returns).
std::unique_ptr<Transfer> make_cpu_transfer(const CpuTransferOptions& options = {});

// Measures the host -> device copy bandwidth of `transfer` in GB/s (1e9 bytes/s) with one
// `bytes`-sized 2-D copy on a copy stream (its buffers come from `device` and the host tier and are freed again).
class Device;
double measure_copy_gbps(Transfer& transfer, Device& device, size_t bytes);

}  // namespace headinfer
