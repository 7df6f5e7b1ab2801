#pragma once
// Attention on the host CPU over head blocks that live in host memory (the host tier, pinned on
// CUDA). Hybrid decode attends some offloaded head groups here instead of streaming them over the
// link: only the query goes to the host and the output with its log-sum-exp comes back, so the
// caller hands this kernel host pointers and nothing else (../shared/DESIGN.md, "The head block").
//
// The contract is Ops::attention's (AttentionArgs: causal, bottom-right aligned, optional window,
// GQA n_q_heads per kv head, natural-log LSE, -inf where a query sees no key), with KV in F32,
// F16 or BF16 and fp32 math. Results depend only on the shapes, never on the thread count: each
// head's keys are cut into splits by length alone, and the splits are merged in a fixed order.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "headinfer/backend.h"

namespace headinfer {

enum class HostIsa : uint8_t {
  Auto,    // the widest this CPU runs
  Scalar,  // portable C++
  Avx2,    // AVX2 + FMA + F16C
  Avx512,  // AVX-512F
};
std::string_view host_isa_name(HostIsa isa);
bool host_isa_supported(HostIsa isa);  // built in and run by this CPU
HostIsa best_host_isa();

struct HostAttentionOptions {
  int n_threads = 0;            // 0: every core (std::thread::hardware_concurrency)
  HostIsa isa = HostIsa::Auto;
  // Largest call run() accepts; the workspace is sized from these once, at construction.
  int64_t max_heads = 1;        // kv heads per run() call
  int64_t max_queries = 1;      // query rows per head
  int64_t max_q_heads = 1;      // query heads per kv head (GQA group)
  int64_t max_head_dim = 128;
  int64_t max_pages = 1;        // pages a paged head (HostKvPages) may span
};

// A kv head whose K and V are stored in pages of page_rows keys (the host tier's slabs, HeadStore)
// instead of one run: key j is row j % page_rows of page j / page_rows, rows kv.row_stride
// elements apart inside a page (AttentionArgs::kv gives the dtype and row stride; its k and v are
// not read). The kernel cuts its key splits at page boundaries as well as at its own cuts, so each
// split reads one page and the splits merge as always: a head that lies in one page gives the same
// bits as the unpaged call, and in general the result is the unpaged call's with more cuts.
struct HostKvPages {
  const void* const* k = nullptr;  // [pages]: page p holds keys [p * page_rows, (p + 1) * page_rows)
  const void* const* v = nullptr;
  int64_t page_rows = 0;           // 0: not paged
};

class HostAttention {
 public:
  explicit HostAttention(const HostAttentionOptions& options);
  ~HostAttention();
  HostAttention(const HostAttention&) = delete;
  HostAttention& operator=(const HostAttention&) = delete;

  // Attends each element of `heads` (one kv head and its n_q_heads query heads) with every
  // thread, writing out and lse. All pointers are host memory; q, out and lse are F32. Throws
  // Error when a call is larger than the options allow. Does not allocate.
  void run(std::span<const AttentionArgs> heads);
  // The same with paged K/V: pages is empty (no head paged) or has one element per head.
  void run(std::span<const AttentionArgs> heads, std::span<const HostKvPages> pages);

  HostIsa isa() const;
  int n_threads() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Decode-shaped timing of `attention` (one query, n_q_heads per kv head, KV of `dtype`, head_dim
// 128) over about `bytes` of K and V in host memory: KV bytes read per second in GB/s (1e9 B/s).
// This is the "host DRAM read bandwidth" the planner balances against the link.
double measure_host_attention_gbps(HostAttention& attention, DType dtype, size_t bytes, int64_t n_q_heads);

// "Intel(R) Xeon(R) ..." from /proc/cpuinfo; "unknown cpu" when it cannot be read.
std::string host_cpu_name();

}  // namespace headinfer
