#pragma once
// The CUDA device: GPU memory with a byte budget, one compute stream, and the CUDA op set
// (backend/cuda/). Available when the project is built with the CUDA backend.
#include <cstddef>
#include <cstdint>
#include <memory>

#include "headinfer/backend.h"

namespace headinfer {

struct CudaDeviceOptions {
  int ordinal = 0;            // which GPU (cudaSetDevice numbering)
  size_t memory_budget = 0;   // bytes the device may hand out; 0: the GPU's free memory at start
  // Test aid: allocations after the first n are refused as a failed cudaMalloc is (the GPU running
  // out while an engine loads or reserves cuBLASLt / cuDNN workspace); -1: never.
  int64_t alloc_fail_after = -1;
};

// Throws headinfer::Error when no CUDA GPU is present or the ordinal does not exist.
std::unique_ptr<Device> make_cuda_device(const CudaDeviceOptions& options = {});

// Number of usable CUDA GPUs (0 when there is no driver or no GPU); never throws.
int cuda_device_count();

}  // namespace headinfer
