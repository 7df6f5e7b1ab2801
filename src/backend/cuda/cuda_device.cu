// The CUDA device: cudaMalloc'ed memory under a byte budget, one non-blocking compute stream and
// one cuBLASLt handle per device object (no process-wide state, so two engines can coexist).
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "../budgeted_pool.h"

#include "cuda_common.h"
#include "cuda_ops.h"
#include "cuda_transfer.h"
#include "headinfer/cuda_device.h"

namespace headinfer {
namespace cuda {

void throw_cuda_error(cudaError_t e, const char* expr, const char* file, int line) {
  throw Error(std::string("CUDA error: ") + cudaGetErrorString(e) + " in " + expr + " (" + file + ":" +
              std::to_string(line) + ")");
}

bool pdl_on_current_device() {
  static const bool allowed = [] {
    const char* v = std::getenv("HEADINFER_PDL");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  if (!allowed) return false;
  // Per device (ordinals < 64): bit d of `known` once its compute capability was read, bit d of
  // `capable` when that is 9.0 or later.
  static std::atomic<uint64_t> known{0}, capable{0};
  int device = 0;
  HEADINFER_CUDA_CHECK(cudaGetDevice(&device));
  if (device >= 64) return false;
  const uint64_t bit = uint64_t{1} << device;
  if ((known.load(std::memory_order_acquire) & bit) == 0) {
    int major = 0;
    HEADINFER_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    if (major >= 9) capable.fetch_or(bit);
    known.fetch_or(bit, std::memory_order_release);
  }
  return (capable.load(std::memory_order_relaxed) & bit) != 0;
}

void Scratch::release() {
  if (buffer_.data() == nullptr) return;
  HEADINFER_CUDA_CHECK(cudaStreamSynchronize(stream_));
  buffer_.reset();
}

void* Scratch::get(size_t bytes) {
  if (bytes <= buffer_.bytes() && buffer_.data() != nullptr) return buffer_.data();
  release();  // the old buffer, once the kernels queued on it are done
  buffer_ = DeviceBuffer(device_, bytes, what_);
  return buffer_.data();
}

// What reserve_workspace below takes from a fresh device, term by term.
size_t CudaOps::workspace_bytes(const OpsWorkspaceSizes& s) const {
  size_t bytes = static_cast<size_t>(std::max<int64_t>(s.max_tokens, 1)) * sizeof(int32_t) + gemm_workspace_bytes();
  if (s.weight_dtype != DType::F32)
    bytes += static_cast<size_t>(s.max_tokens * s.max_in_features) * dtype_size(s.weight_dtype) + kCudnnWorkspaceBytes;
  return bytes + attention_partials_max_bytes(sm_count_, s.max_tokens * s.max_q_heads, s.max_kv_heads, s.head_dim) +
         sample_scratch_bytes(s.vocab);
}

void CudaOps::release_workspace() {
  if (reservations_ > 0 && --reservations_ > 0) return;
  wait_prepared();  // prepare_linear's runs use the GEMM workspace and cast scratch
  ids_.release();
  gemm_cast_.release();
  gemm_workspace_.release();
  attn_partials_.release();
  sample_scratch_.release();
  cudnn_.release_workspace();
}

void CudaOps::reserve_workspace(const OpsWorkspaceSizes& s) {
  ++reservations_;
  try {
    reserve_scratch(s);
  } catch (...) {
    release_workspace();  // a refused allocation leaves nothing behind but the other models' share
    throw;
  }
}

void CudaOps::reserve_scratch(const OpsWorkspaceSizes& s) {
  const int64_t max_ids = std::max<int64_t>(s.max_tokens, 1);
  ids_.get(static_cast<size_t>(max_ids) * sizeof(int32_t));
  if (max_ids > ids_pinned_capacity_) {
    if (ids_pinned_ != nullptr) cudaFreeHost(ids_pinned_);
    ids_pinned_ = nullptr;
    ids_pinned_capacity_ = 0;
    HEADINFER_CUDA_CHECK(cudaMallocHost(&ids_pinned_, static_cast<size_t>(max_ids) * sizeof(int32_t)));
    ids_pinned_capacity_ = max_ids;
  }
  gemm_workspace_.get(gemm_workspace_bytes());
  // Only 16-bit weights round x for the tensor-core GEMM.
  if (s.weight_dtype != DType::F32)
    gemm_cast_.get(static_cast<size_t>(s.max_tokens * s.max_in_features) * dtype_size(s.weight_dtype));
  const size_t partials = attention_partials_max_bytes(sm_count_, s.max_tokens * s.max_q_heads, s.max_kv_heads, s.head_dim);
  if (partials > 0) attn_partials_.get(partials);
  if (s.vocab > 0) sample_scratch_.get(sample_scratch_bytes(s.vocab));
  // cuDNN SDPA runs only on 16-bit KV (16-bit checkpoints); its forward graphs have asked for a few
  // hundred bytes of workspace, so 1 MiB leaves room without taking much from the KV.
  if (s.weight_dtype != DType::F32) cudnn_.reserve_workspace(kCudnnWorkspaceBytes);
  // The KV of 16-bit weights is kept in their dtype (CudaDevice::kv_dtype); prefill chunks attend it
  // through cuDNN, whose kernel is compiled now rather than in the first prefill.
  if (s.weight_dtype != DType::F32 && s.max_tokens >= kCudnnMinQueries && s.head_dim > 0)
    cudnn_.warm_up(s.weight_dtype, s.head_dim, std::max<int64_t>(s.max_q_heads, 1),
                   static_cast<float>(std::pow(static_cast<double>(s.head_dim), -0.5)));  // as the KV caches' scale
}

namespace {

class CudaDevice final : public Device {
 public:
  explicit CudaDevice(const CudaDeviceOptions& o) : ordinal_(o.ordinal) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      cudaGetLastError();  // clear the sticky "no device" error for later callers
      throw Error("no CUDA GPU found: run on a machine with an NVIDIA GPU and driver, or use the CPU backend");
    }
    if (o.ordinal < 0 || o.ordinal >= count)
      throw Error("CUDA device " + std::to_string(o.ordinal) + " does not exist (" + std::to_string(count) +
                  " GPU(s) present)");
    HEADINFER_CUDA_CHECK(cudaSetDevice(o.ordinal));
    cudaDeviceProp prop{};
    HEADINFER_CUDA_CHECK(cudaGetDeviceProperties(&prop, o.ordinal));
    name_ = std::string("cuda:") + std::to_string(o.ordinal) + " (" + prop.name + ")";
    size_t free_bytes = 0, total_bytes = 0;
    HEADINFER_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    memory_.emplace(o.memory_budget != 0 ? o.memory_budget : free_bytes, "GPU memory",
                    "on " + name_ + ": raise --gpu-mem", o.alloc_fail_after);
    HEADINFER_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    if (cublasLtCreate(&lt_) != CUBLAS_STATUS_SUCCESS) {
      cudaStreamDestroy(stream_);
      throw Error("cannot create a cuBLASLt handle on " + name_);
    }
    ops_ = std::make_unique<cuda::CudaOps>(*this, stream_, lt_, prop.multiProcessorCount);
    HEADINFER_CUDA_CHECK(cudaHostAlloc(&read_pinned_, kReadSlots * kReadBytes, cudaHostAllocDefault));
    for (cudaEvent_t& e : read_done_) HEADINFER_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }

  ~CudaDevice() override {
    cudaSetDevice(ordinal_);
    abort_graph();
    if (graph_exec_ != nullptr) cudaGraphExecDestroy(graph_exec_);
    ops_.reset();  // returns its scratch buffers while the allocator is still alive
    cudaStreamSynchronize(stream_);
    memory_->release_all([](void* p) { cudaFree(p); });
    cublasLtDestroy(lt_);
    for (cudaEvent_t e : read_done_)
      if (e != nullptr) cudaEventDestroy(e);
    if (read_pinned_ != nullptr) cudaFreeHost(read_pinned_);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return name_; }
  Ops& ops() override { return *ops_; }

  void* alloc(size_t bytes, const char* what) override {
    return memory_->allocate(bytes, what, [&](size_t n) {
      void* p = nullptr;
      const cudaError_t e = cudaMalloc(&p, n == 0 ? 256 : n);
      if (e != cudaSuccess) {
        cudaGetLastError();
        throw Error(std::string("cudaMalloc of ") + std::to_string(n) + " bytes for " + what + " failed on " + name_ +
                    ": " + cudaGetErrorString(e));
      }
      return p;
    });
  }

  // cudaFree waits for the device, so no queued kernel still uses p.
  void free(void* p) override {
    memory_->release(p, [](void* q) { cudaFree(q); });
  }
  size_t bytes_in_use() const override { return memory_->in_use(); }
  size_t peak_bytes() const override { return memory_->peak(); }

  void read_to_host(void* dst, const void* src, size_t bytes) override {
    HEADINFER_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    HEADINFER_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  // Pinned slots, so the copy is queued (not staged by the host) and the event marks its landing.
  void queue_read(int slot, const void* src, size_t bytes) override {
    check_read(slot, bytes);
    unsigned char* dst = static_cast<unsigned char*>(read_pinned_) + slot * kReadBytes;
    HEADINFER_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    HEADINFER_CUDA_CHECK(cudaEventRecord(read_done_[slot], stream_));
  }
  void wait_read(int slot, void* dst, size_t bytes) override {
    check_read(slot, bytes);
    HEADINFER_CUDA_CHECK(cudaEventSynchronize(read_done_[slot]));
    std::memcpy(dst, static_cast<const unsigned char*>(read_pinned_) + slot * kReadBytes, bytes);
  }
  void write_from_host(void* dst, const void* src, size_t bytes) override {
    HEADINFER_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
    // The caller may release `src` as soon as we return.
    HEADINFER_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  size_t memory_budget() const override { return memory_->budget(); }
  std::unique_ptr<Transfer> make_transfer(const TransferOptions& options) override {
    return make_cuda_transfer(ordinal_, stream_, options);
  }
  bool begin_graph() override {
    if (graphs_broken_) return false;
    if (cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
      cudaGetLastError();
      graphs_broken_ = true;
      return false;
    }
    return true;
  }

  bool end_graph() override {
    cudaGraph_t graph = nullptr;
    if (cudaStreamEndCapture(stream_, &graph) != cudaSuccess || graph == nullptr) {
      cudaGetLastError();  // something in the step cannot be recorded: no graphs from now on
      if (graph != nullptr) cudaGraphDestroy(graph);
      graphs_broken_ = true;
      return false;
    }
    // Steps differ only in parameters (positions, key counts, split counts), so the executable
    // graph is usually updated in place; a different shape (a split kernel added) re-instantiates.
    if (graph_exec_ != nullptr) {
      cudaGraphExecUpdateResultInfo info{};
      if (cudaGraphExecUpdate(graph_exec_, graph, &info) != cudaSuccess) {
        cudaGetLastError();
        cudaGraphExecDestroy(graph_exec_);
        graph_exec_ = nullptr;
      }
    }
    if (graph_exec_ == nullptr && cudaGraphInstantiate(&graph_exec_, graph, 0) != cudaSuccess) {
      cudaGetLastError();
      graph_exec_ = nullptr;
      cudaGraphDestroy(graph);
      graphs_broken_ = true;
      return false;
    }
    cudaGraphDestroy(graph);
    HEADINFER_CUDA_CHECK(cudaGraphLaunch(graph_exec_, stream_));
    return true;
  }

  void abort_graph() override {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream_, &status) != cudaSuccess) cudaGetLastError();
    if (status == cudaStreamCaptureStatusNone) return;
    cudaGraph_t graph = nullptr;
    cudaStreamEndCapture(stream_, &graph);
    cudaGetLastError();
    if (graph != nullptr) cudaGraphDestroy(graph);
  }

  // 16-bit checkpoints keep bf16 KV: half the bytes to stream, and the kernels widen it to fp32.
  // f32 checkpoints keep f32 KV so their greedy ids match the CPU reference exactly.
  DType kv_dtype(DType weight_dtype) const override {
    return weight_dtype == DType::F32 ? DType::F32 : DType::BF16;
  }

 private:
  int ordinal_;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  std::unique_ptr<cuda::CudaOps> ops_;
  std::optional<BudgetedPool> memory_;  // made once the card's free memory is known
  cudaGraphExec_t graph_exec_ = nullptr;  // the last step's graph, updated in place step to step
  bool graphs_broken_ = false;            // a recording failed: steps run without graphs
  void* read_pinned_ = nullptr;           // [kReadSlots][kReadBytes] host memory for queue_read
  cudaEvent_t read_done_[kReadSlots] = {};
};

}  // namespace
}  // namespace cuda

std::unique_ptr<Device> make_cuda_device(const CudaDeviceOptions& options) {
  return std::make_unique<cuda::CudaDevice>(options);
}

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

}  // namespace headinfer
