// Host attention: the per-ISA split kernels (host_attention_kernel.h), a thread pool that runs the
// (kv head, key split) tasks, and the fixed-order merge of the splits into output and LSE.
//
// Split-KV is what lets one decode query use every core: a head's visible keys are cut into
// splits of at least kMinSplitKeys keys (at most kMaxSplits of them), so 128K keys of one head
// become 64 tasks. The cut depends on the shapes only, and each split is computed by one thread
// in a fixed order, so the output does not depend on the thread count or on scheduling. A paged
// head (HostKvPages: the host tier's slabs) is cut at its page boundaries too, so a split never
// spans two pages; the kernel then sees each split as a contiguous run of one page.
#include "headinfer/host_attention.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <thread>
#include <vector>

#if defined(HEADINFER_HOST_X86)
#include <cpuid.h>
#endif

#include "headinfer/error.h"
#include "host_attention_job.h"
#include "thread_pool.h"

namespace headinfer {

namespace hk = cpu::host_kernel;

namespace {

constexpr int64_t kMinSplitKeys = 256;  // below this a split's fixed costs (q, state) show
constexpr int64_t kMaxSplits = 64;      // enough tasks for 64 cores on one head

hk::SplitKernel kernel_for(HostIsa isa) {
  switch (isa) {
#if defined(HEADINFER_HOST_X86)
    case HostIsa::Avx512: return hk::run_split_avx512;
    case HostIsa::Avx2: return hk::run_split_avx2;
#endif
    default: return hk::run_split_scalar;
  }
}

hk::KvElem kv_elem(DType t) {
  switch (t) {
    case DType::F32: return hk::KvElem::F32;
    case DType::F16: return hk::KvElem::F16;
    case DType::BF16: return hk::KvElem::BF16;
  }
  return hk::KvElem::F32;
}

}  // namespace

std::string_view host_isa_name(HostIsa isa) {
  switch (isa) {
    case HostIsa::Auto: return "auto";
    case HostIsa::Scalar: return "scalar";
    case HostIsa::Avx2: return "avx2";
    case HostIsa::Avx512: return "avx512";
  }
  return "?";
}

#if defined(HEADINFER_HOST_X86)
// F16C by CPUID (leaf 1, ECX): clang 14's __builtin_cpu_supports does not know "f16c".
bool cpu_has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & bit_F16C) != 0;
}
#endif

bool host_isa_supported(HostIsa isa) {
  switch (isa) {
    case HostIsa::Auto:
    case HostIsa::Scalar: return true;
#if defined(HEADINFER_HOST_X86)
    case HostIsa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
    case HostIsa::Avx512: return __builtin_cpu_supports("avx512f");
#endif
    default: return false;
  }
}

HostIsa best_host_isa() {
  if (host_isa_supported(HostIsa::Avx512)) return HostIsa::Avx512;
  if (host_isa_supported(HostIsa::Avx2)) return HostIsa::Avx2;
  return HostIsa::Scalar;
}

struct HostAttention::Impl {
  explicit Impl(const HostAttentionOptions& o)
      : options(o),
        isa(o.isa == HostIsa::Auto ? best_host_isa() : o.isa),
        kernel(kernel_for(isa)),
        pool(o.n_threads > 0 ? o.n_threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))) {
    if (!host_isa_supported(isa))
      throw Error("host attention: this CPU does not run the " + std::string(host_isa_name(isa)) + " path");
    if (o.max_heads < 1 || o.max_queries < 1 || o.max_q_heads < 1 || o.max_head_dim < 1 || o.max_pages < 1)
      throw Error("host attention: every size limit must be at least 1");
    const int64_t dp = hk::padded_dim(o.max_head_dim);
    // Rounded to whole 64-byte lines so two threads never write the same cache line.
    scratch_floats = (2 * hk::kTileKeys * dp + o.max_queries * o.max_q_heads * dp + o.max_q_heads * hk::kTileKeys +
                      o.max_q_heads + 15) / 16 * 16;
    scratch.assign(static_cast<size_t>(pool.size() * scratch_floats), 0.0f);
    states.assign(static_cast<size_t>(o.max_heads * max_splits() * o.max_queries * o.max_q_heads *
                                      hk::state_floats(o.max_head_dim)),
                  0.0f);
    cuts.assign(static_cast<size_t>(o.max_heads * (max_splits() + 1)), 0);
    heads.resize(static_cast<size_t>(o.max_heads));
  }

  // Splits of one head: the length cuts (at most kMaxSplits) and a cut at each page boundary.
  int64_t max_splits() const { return kMaxSplits + options.max_pages - 1; }

  // One kv head of the current call, with its task and state ranges.
  struct HeadJob {
    hk::Head head;
    const AttentionArgs* args = nullptr;
    HostKvPages pages;                // page_rows 0: head.k, head.v are one run
    int64_t key_lo = 0, key_len = 0;  // the union of what its queries see
    int64_t n_splits = 0;
    int64_t first_task = 0;
    int64_t first_cut = 0;            // split s is keys [cuts[first_cut + s], cuts[first_cut + s + 1])
    int64_t state_offset = 0;         // floats into `states`: [n_splits][n_queries * n_q_heads][state_floats]
  };

  void check(const AttentionArgs& a) const {
    const auto& o = options;
    if (a.q.rows > o.max_queries || a.n_q_heads > o.max_q_heads || a.head_dim > o.max_head_dim)
      throw Error("host attention: a head of " + std::to_string(a.q.rows) + " queries x " +
                  std::to_string(a.n_q_heads) + " query heads x " + std::to_string(a.head_dim) +
                  " dims is over the limits it was built for (" + std::to_string(o.max_queries) + " x " +
                  std::to_string(o.max_q_heads) + " x " + std::to_string(o.max_head_dim) + ")");
    if (a.q.dtype != DType::F32 || a.out.dtype != DType::F32 || a.lse.dtype != DType::F32)
      throw Error("host attention: q, out and lse must be F32");
    if (a.head_dim < 1 || a.n_q_heads < 1 || a.n_keys < 0) throw Error("host attention: empty head shape");
  }

  // Cuts [lo, lo + len) of head j into splits: kMaxSplits at most by length (as many as make splits
  // of kMinSplitKeys), plus one more at each page boundary inside it. Depends on shapes only.
  void cut_splits(HeadJob& j, int64_t* c) const {
    int64_t n = 0;
    if (j.key_len > 0) {
      const int64_t lo = j.key_lo, len = j.key_len, P = j.pages.page_rows;
      const int64_t by_length = std::clamp((len + kMinSplitKeys - 1) / kMinSplitKeys, int64_t{1}, kMaxSplits);
      int64_t next_page = P > 0 ? (lo / P + 1) * P : std::numeric_limits<int64_t>::max();
      c[n++] = lo;
      for (int64_t s = 1; s <= by_length; ++s) {
        const int64_t cut = lo + len * s / by_length;  // strictly increasing: by_length <= len
        for (; next_page < cut; next_page += P) c[n++] = next_page;
        if (next_page == cut) next_page += P;
        c[n++] = cut;
      }
    }
    j.n_splits = n > 0 ? n - 1 : 0;
  }

  void check_pages(const AttentionArgs& a, const HeadJob& j) const {
    const HostKvPages& p = j.pages;
    if (p.page_rows < 0) throw Error("host attention: negative page size");
    if (p.page_rows == 0 || j.key_len == 0) return;
    const int64_t first = j.key_lo / p.page_rows, last = (j.key_lo + j.key_len - 1) / p.page_rows;
    if (last - first + 1 > options.max_pages)
      throw Error("host attention: a head spans " + std::to_string(last - first + 1) + " pages, built for " +
                  std::to_string(options.max_pages));
    if (p.k == nullptr || p.v == nullptr) throw Error("host attention: a paged head without its page tables");
    for (int64_t q = first; q <= last; ++q)
      if (p.k[q] == nullptr || p.v[q] == nullptr)
        throw Error("host attention: page " + std::to_string(q) + " of a head is not there");
  }

  void run(std::span<const AttentionArgs> args, std::span<const HostKvPages> pages) {
    if (static_cast<int64_t>(args.size()) > options.max_heads)
      throw Error("host attention: " + std::to_string(args.size()) + " heads in one call, built for " +
                  std::to_string(options.max_heads));
    if (!pages.empty() && pages.size() != args.size())
      throw Error("host attention: " + std::to_string(pages.size()) + " page tables for " +
                  std::to_string(args.size()) + " heads");
    n_heads = static_cast<int64_t>(args.size());
    n_tasks = 0;
    int64_t state_end = 0, cut_end = 0;
    for (int64_t i = 0; i < n_heads; ++i) {
      const AttentionArgs& a = args[static_cast<size_t>(i)];
      check(a);
      HeadJob& j = heads[static_cast<size_t>(i)];
      j.args = &a;
      j.pages = pages.empty() ? HostKvPages{} : pages[static_cast<size_t>(i)];
      j.head = hk::Head{static_cast<const float*>(a.q.data), a.q.row_stride, a.kv.k, a.kv.v, a.kv.row_stride,
                        kv_elem(a.kv.dtype), a.n_keys, a.q.rows, a.n_q_heads, a.head_dim, a.q_pos0, a.k_pos0,
                        a.window, a.scale, a.softcap};
      const int64_t last_q = a.q_pos0 + a.q.rows - 1;
      const int64_t hi = std::min(a.n_keys, last_q - a.k_pos0 + 1);
      const int64_t lo = a.window > 0 ? std::max<int64_t>(0, a.q_pos0 - a.window + 1 - a.k_pos0) : 0;
      j.key_lo = lo;
      j.key_len = std::max<int64_t>(0, hi - lo);
      check_pages(a, j);
      j.first_cut = cut_end;
      cut_splits(j, cuts.data() + cut_end);
      cut_end += j.n_splits + 1;
      j.first_task = n_tasks;
      j.state_offset = state_end;
      n_tasks += j.n_splits;
      state_end += j.n_splits * a.q.rows * a.n_q_heads * hk::state_floats(a.head_dim);
    }
    next_task.store(0, std::memory_order_relaxed);
    pool.parallel_for(pool.size(), [this](int64_t b, int64_t e) {
      for (int64_t part = b; part < e; ++part) run_tasks(part);
    });
    // Merge: one (head, query, query head) per item.
    rows_per_head = 0;
    for (int64_t i = 0; i < n_heads; ++i) {
      const hk::Head& h = heads[static_cast<size_t>(i)].head;
      rows_per_head = std::max(rows_per_head, h.n_queries * h.n_q_heads);
    }
    pool.parallel_for(n_heads * rows_per_head, [this](int64_t b, int64_t e) {
      for (int64_t item = b; item < e; ++item) merge(item / rows_per_head, item % rows_per_head);
    });
  }

  void run_tasks(int64_t part) {
    float* base = scratch.data() + part * scratch_floats;
    const int64_t dp = hk::padded_dim(options.max_head_dim);
    float* q = base + 2 * hk::kTileKeys * dp;
    float* scores = q + options.max_queries * options.max_q_heads * dp;
    const hk::Scratch s{base, base + hk::kTileKeys * dp, q, scores, scores + options.max_q_heads * hk::kTileKeys};
    for (;;) {
      const int64_t task = next_task.fetch_add(1, std::memory_order_relaxed);
      if (task >= n_tasks) return;
      int64_t i = 0;
      while (task >= heads[static_cast<size_t>(i)].first_task + heads[static_cast<size_t>(i)].n_splits) ++i;
      const HeadJob& j = heads[static_cast<size_t>(i)];
      const int64_t split = task - j.first_task;
      const int64_t begin = cuts[static_cast<size_t>(j.first_cut + split)];
      const int64_t end = cuts[static_cast<size_t>(j.first_cut + split + 1)];
      const int64_t split_floats = j.head.n_queries * j.head.n_q_heads * hk::state_floats(j.head.head_dim);
      float* st = states.data() + j.state_offset + split * split_floats;
      const int64_t P = j.pages.page_rows;
      if (P == 0) {
        kernel(j.head, begin, end, s, st);
        continue;
      }
      // The split lies in one page: the kernel sees that page as the run, keys counted from its
      // first (k_pos0 moves with them, so visibility is unchanged).
      const int64_t page = begin / P, first = page * P;
      hk::Head h = j.head;
      h.k = j.pages.k[page];
      h.v = j.pages.v[page];
      h.n_keys -= first;
      h.k_pos0 += first;
      kernel(h, begin - first, end - first, s, st);
    }
  }

  // Splits merged in order: M = max m_s, L = sum l_s e^(m_s - M), out = sum e^(m_s - M) acc_s / L.
  void merge(int64_t i, int64_t row) {
    const HeadJob& j = heads[static_cast<size_t>(i)];
    const hk::Head& h = j.head;
    if (row >= h.n_queries * h.n_q_heads) return;
    const int64_t t = row / h.n_q_heads, qh = row % h.n_q_heads, d = h.head_dim;
    const int64_t sf = hk::state_floats(d), dp = hk::padded_dim(d);
    const int64_t split_floats = h.n_queries * h.n_q_heads * sf;
    float* out = j.args->out.row<float>(t) + qh * d;
    float* lse = j.args->lse.row<float>(t) + qh;
    const float* first = states.data() + j.state_offset + row * sf;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t s = 0; s < j.n_splits; ++s) {
      const float* st = first + s * split_floats;
      if (st[dp + 1] > 0.0f) m = std::max(m, st[dp]);
    }
    if (m == -std::numeric_limits<float>::infinity()) {
      std::fill(out, out + d, 0.0f);
      *lse = m;
      return;
    }
    float l = 0.0f;
    std::fill(out, out + d, 0.0f);
    for (int64_t s = 0; s < j.n_splits; ++s) {
      const float* st = first + s * split_floats;
      if (!(st[dp + 1] > 0.0f)) continue;
      const float w = std::exp(st[dp] - m);
      l += st[dp + 1] * w;
      for (int64_t c = 0; c < d; ++c) out[c] += w * st[c];
    }
    const float inv = 1.0f / l;
    for (int64_t c = 0; c < d; ++c) out[c] *= inv;
    *lse = m + std::log(l);
  }

  const HostAttentionOptions options;
  const HostIsa isa;
  const hk::SplitKernel kernel;
  cpu::ThreadPool pool;
  int64_t scratch_floats = 0;
  std::vector<float> scratch;  // [n_threads][scratch_floats]: per thread hk::Scratch (K tile, V tile, q, scores, alpha)
  std::vector<float> states;   // F32 split states of the current call, see HeadJob::state_offset
  std::vector<int64_t> cuts;   // [max_heads][max_splits + 1]: split boundaries of the current call, see HeadJob
  std::vector<HeadJob> heads;  // [max_heads]: the current call
  int64_t n_heads = 0;
  int64_t n_tasks = 0;
  int64_t rows_per_head = 0;
  std::atomic<int64_t> next_task{0};
};

HostAttention::HostAttention(const HostAttentionOptions& options) : impl_(std::make_unique<Impl>(options)) {}
HostAttention::~HostAttention() = default;
void HostAttention::run(std::span<const AttentionArgs> heads) { impl_->run(heads, {}); }
void HostAttention::run(std::span<const AttentionArgs> heads, std::span<const HostKvPages> pages) {
  impl_->run(heads, pages);
}
HostIsa HostAttention::isa() const { return impl_->isa; }
int HostAttention::n_threads() const { return impl_->pool.size(); }

double measure_host_attention_gbps(HostAttention& attention, DType dtype, size_t bytes, int64_t n_q_heads) {
  constexpr int64_t d = 128;
  const auto elem = static_cast<int64_t>(dtype_size(dtype));
  const int64_t n_keys = std::max<int64_t>(1, static_cast<int64_t>(bytes) / (2 * d * elem));
  // K, V [n_keys][128] of `dtype`, values in (-1, 1) from a cheap LCG (filling 256 MiB with
  // std::mt19937 takes longer than the timing); q, out F32 [1][n_q_heads * 128].
  std::vector<uint8_t> k(static_cast<size_t>(n_keys * d * elem)), v(k.size());
  uint32_t state = 12345;
  auto next = [&state] {
    state = state * 1664525u + 1013904223u;
    const uint32_t bits = 0x3f800000u | (state >> 9);  // [1, 2)
    float x;
    std::memcpy(&x, &bits, 4);
    return (x - 1.5f) * 2.0f;
  };
  auto fill = [&](std::vector<uint8_t>& buf) {
    for (int64_t i = 0; i < n_keys * d; ++i) {
      const float x = next();
      if (dtype == DType::F32) {
        std::memcpy(buf.data() + i * 4, &x, 4);
      } else {
        const uint16_t h = dtype == DType::BF16 ? f32_to_bf16(x) : f32_to_f16(x);
        std::memcpy(buf.data() + i * 2, &h, 2);
      }
    }
  };
  fill(k);
  fill(v);
  std::vector<float> q(static_cast<size_t>(n_q_heads * d)), out(q.size()), lse(static_cast<size_t>(n_q_heads));
  for (float& x : q) x = next();
  AttentionArgs a;
  a.q = MatView{q.data(), DType::F32, 1, n_q_heads * d, n_q_heads * d};
  a.kv = KvHeadView{k.data(), v.data(), dtype, d};
  a.n_keys = n_keys;
  a.head_dim = d;
  a.n_q_heads = n_q_heads;
  a.q_pos0 = n_keys - 1;
  a.scale = 1.0f / std::sqrt(static_cast<float>(d));
  a.out = MatView{out.data(), DType::F32, 1, n_q_heads * d, n_q_heads * d};
  a.lse = MatView{lse.data(), DType::F32, 1, n_q_heads, n_q_heads};
  attention.run(std::span<const AttentionArgs>(&a, 1));  // warm-up: page faults, caches
  double best = std::numeric_limits<double>::infinity();
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    attention.run(std::span<const AttentionArgs>(&a, 1));
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return static_cast<double>(2 * n_keys * d * elem) / best / 1e9;
}

std::string host_cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
  }
  return "unknown cpu";
}

}  // namespace headinfer
