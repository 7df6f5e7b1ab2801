#pragma once
// What the dispatcher (host_attention.cpp) hands the per-ISA kernels (host_attention_*.cpp).
//
// The ISA translation units are compiled with -mavx2 / -mavx512f. An inline function with external
// linkage that such a unit emits out of line (a header's helper, a std:: template) could be the
// copy the linker keeps for the whole program, and then run on a CPU without those instructions.
// So the boundary is plain data and one free function per ISA; the kernels live in an anonymous
// namespace and include nothing but <cstdint>, <cstddef> and <immintrin.h>.
#include <cstddef>
#include <cstdint>

namespace headinfer::cpu::host_kernel {

enum class KvElem : uint8_t { F32, F16, BF16 };

// Keys per tile: the unit of the online softmax (one max, one rescale per tile) and of the sums
// that start from zero (at most kTileKeys terms deep); a multiple of every register width.
constexpr int64_t kTileKeys = 32;
// Head dims are padded to a multiple of 32 floats (a chunk of two AVX-512 registers; four AVX2
// ones) in the fp32 scratch, with zeros, so every loop runs over whole chunks: zero K columns add
// nothing to a dot product and zero V columns stay zero in the output.
constexpr int64_t kPadFloats = 32;
static constexpr int64_t padded_dim(int64_t d) { return (d + kPadFloats - 1) / kPadFloats * kPadFloats; }

// One kv head with its query heads, as the kernel reads it.
struct Head {
  const float* q = nullptr;    // F32 [n_queries][q_row_stride]; query head h at column h * head_dim
  int64_t q_row_stride = 0;
  const void* k = nullptr;     // KvElem [n_keys][kv_row_stride]
  const void* v = nullptr;
  int64_t kv_row_stride = 0;   // elements
  KvElem elem = KvElem::F32;
  int64_t n_keys = 0;
  int64_t n_queries = 0;
  int64_t n_q_heads = 0;
  int64_t head_dim = 0;
  int64_t q_pos0 = 0;
  int64_t k_pos0 = 0;
  int64_t window = 0;
  float scale = 1.0f;
  float softcap = 0.0f;  // > 0: scores := tanh(scores / softcap) * softcap after scaling
};

// Per-thread fp32 scratch (owned by the dispatcher, sized at construction).
struct Scratch {
  float* k_tile = nullptr;  // [kTileKeys][padded_dim]: the tile's keys, widened, zero-padded (odd dims)
  float* v_tile = nullptr;  // [kTileKeys][padded_dim]
  float* q = nullptr;       // [n_queries * n_q_heads][padded_dim]: the queries, zero-padded
  float* scores = nullptr;  // [n_q_heads][kTileKeys]: one query's scores, then p, over a tile
  float* alpha = nullptr;   // [n_q_heads]: exp(m_old - m_new) of the current tile
};

// The running softmax state of one (query, query head) over one split of the keys:
// acc[padded_dim] (sum of p_j * v_j, not yet divided), then m (max score), then l (sum of p_j).
// m = -inf and l = 0 when the split holds no key the query sees.
static constexpr int64_t state_floats(int64_t d) { return padded_dim(d) + 2; }

// Attends keys [key_begin, key_end) of `head` for every query and query head, writing
// states[(t * n_q_heads + h) * state_floats(head_dim)].
using SplitKernel = void (*)(const Head& head, int64_t key_begin, int64_t key_end, const Scratch& scratch,
                             float* states);

void run_split_scalar(const Head&, int64_t, int64_t, const Scratch&, float*);
#if defined(HEADINFER_HOST_X86)
void run_split_avx2(const Head&, int64_t, int64_t, const Scratch&, float*);
void run_split_avx512(const Head&, int64_t, int64_t, const Scratch&, float*);
#endif

}  // namespace headinfer::cpu::host_kernel
