#pragma once
// Between the attention files: attention.cu picks a path per call; attention_decode.cu (split-KV
// decode), attention_cudnn.cpp (cuDNN prefill, with attention_cudnn_io.cu's layout kernels) and
// attention.cu's own CUDA-core kernel (everything else) compute it.
#include <cuda_runtime.h>

#include <cstdint>

#include "headinfer/backend.h"

namespace headinfer::cuda {

class Scratch;

// q F32 [s_q, cols] (rows q.row_stride apart) -> q16 BF16/F16 [s_q, cols] packed, cols = h_q * d.
void sdpa_pack_q(const MatView& q, int64_t cols, void* q16, DType t16, cudaStream_t stream);
// o16 BF16/F16 [s_q, h_q * d] and stats F32 [h_q, s_q] -> out F32 [s_q, h_q * d], lse F32 [s_q, h_q].
void sdpa_unpack_out(const void* o16, const float* stats, DType t16, int64_t s_q, int64_t h_q, int64_t d,
                     const MatView& out, const MatView& lse, cudaStream_t stream);

// stats F32 [h_q, s_q] -> lse F32 [s_q, h_q] alone (O written by cuDNN where the caller wanted it).
void sdpa_unpack_lse(const float* stats, int64_t s_q, int64_t h_q, const MatView& lse, cudaStream_t stream);

// The split-KV decode kernel's partials for any call: F32 [splits, n_kv_heads * n_q_heads, head_dim + 1].
size_t decode_partials_max_bytes(int sm_count, int64_t max_q_heads, int64_t max_kv_heads, int64_t head_dim);
// One query row against n_keys keys of each kv head, read once for all its GQA heads. Returns false, having queued
// nothing, when the shape is not one this kernel takes (then attention.cu's kernel runs).
bool attention_decode(const AttentionArgs& a, int sm_count, Scratch& partials, cudaStream_t stream);

}  // namespace headinfer::cuda
