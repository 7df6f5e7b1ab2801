// Device discovery for the CUDA backend: which GPUs exist and how much memory they have free.
#include <cuda_runtime.h>

#include <string>

#include "headinfer/error.h"

namespace headinfer::cuda {

struct GpuInfo {
  std::string name;
  size_t free_bytes = 0;
  size_t total_bytes = 0;
  int sm_major = 0;
  int sm_minor = 0;
};

GpuInfo query_gpu(int ordinal) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, ordinal) != cudaSuccess)
    throw Error("CUDA device " + std::to_string(ordinal) + " is not available");
  GpuInfo info;
  info.name = prop.name;
  info.sm_major = prop.major;
  info.sm_minor = prop.minor;
  if (cudaSetDevice(ordinal) != cudaSuccess || cudaMemGetInfo(&info.free_bytes, &info.total_bytes) != cudaSuccess)
    throw Error("cannot query memory of CUDA device " + std::to_string(ordinal));
  return info;
}

}  // namespace headinfer::cuda
