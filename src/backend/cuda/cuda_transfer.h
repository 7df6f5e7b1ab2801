#pragma once
// The CUDA Transfer (transfer.cu), made by the CUDA device for its own compute stream.
#include <cuda_runtime.h>

#include <memory>

#include "headinfer/transfer.h"

namespace headinfer::cuda {

std::unique_ptr<Transfer> make_cuda_transfer(int ordinal, cudaStream_t compute_stream, const TransferOptions& options);

}  // namespace headinfer::cuda
