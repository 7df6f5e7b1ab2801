// Prefill attention through cuDNN's fused SDPA. Host code only (compiled by the C++ compiler, which
// is all cudnn-frontend needs); the two small layout kernels it queues are in attention_cudnn_io.cu.
//
// Our mask is positional: key j (at k_pos0 + j) is visible to query t (at q_pos0 + t) when
// k_pos <= q_pos and, with a window w, q_pos - k_pos < w. With off = q_pos0 - k_pos0 that is
// j <= t + off and t + off - j < w. cuDNN's bottom-right band with right bound rb and left bound lb
// keeps (t, j) when j <= t + (s_kv - s_q) + rb and t + (s_kv - s_q) - j < lb. So after trimming the
// keys no query sees (past the last query's diagonal, before the first query's window), off equals
// (s_kv - s_q) + rb with rb >= 0, and lb = w - rb reproduces the window. cuDNN needs s_q <= s_kv
// and, for its Stats to be a log-sum-exp, every row non-empty (lb >= 1); other calls decline.
#include "attention_cudnn.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <future>
#include <map>
#include <optional>
#include <system_error>

#include "attention_internal.h"
#include "cuda_ops.h"
#include "headinfer/dtype.h"
#include "headinfer/error.h"

#if HEADINFER_WITH_CUDNN
#define CUDNN_FRONTEND_SKIP_JSON_LIB 1
#include <cudnn.h>
#include <cudnn_frontend.h>
#endif

namespace headinfer::cuda {

size_t CudnnSdpa::scratch_bytes(int64_t n_tasks, int64_t head_dim) {
  const auto align = [](size_t b) { return (b + 255) / 256 * 256; };
  const size_t vec16 = align(static_cast<size_t>(n_tasks * head_dim) * 2);
  return 2 * vec16 + align(static_cast<size_t>(n_tasks) * sizeof(float));
}

#if HEADINFER_WITH_CUDNN

namespace fe = cudnn_frontend;

namespace {

enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats };

// Everything a graph is specialised on. right_bound -1: no diagonal mask; left_bound 0: no window;
// softcap_bits 0: no soft-capping; o_ld 0: O packed [s_q, h_q * d] in the scratch, else O written
// to the caller's 16-bit output, rows o_ld elements apart.
using GraphKey = std::array<int64_t, 13>;

struct CachedGraph {
  std::shared_ptr<fe::graph::Graph> graph;  // null: cuDNN has no engine for this shape
  int64_t workspace_bytes = 0;
};

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

// A graph is built for each new shape (70-80 ms on an H100), and a chunked prefill meets a new
// shape at every chunk: chunk i + 1 attends to s_q more keys than chunk i. So when a causal graph
// is first used, the graph of the next chunk's shape is built on a thread of its own (with a cuDNN
// handle of its own, as cuDNN requires of threads) while the GPU runs this chunk; the next chunk
// finds it ready. A guess that is never used costs that thread's time and nothing else; the graph
// is the one an inline build gives (same key, same heuristic).
struct CudnnSdpa::Impl {
  Impl(Device& device, cudaStream_t stream) : stream(stream), workspace(device, stream, "cuDNN SDPA workspace") {}
  ~Impl() {
    if (last.valid()) last.wait();  // the builds are chained: the last one ends after all others
    pending.clear();
    graphs.clear();
    if (handle != nullptr) cudnnDestroy(handle);
    if (builder_handle != nullptr) cudnnDestroy(builder_handle);
  }

  cudnnHandle_t get_handle() {
    if (handle == nullptr) {
      if (cudnnCreate(&handle) != CUDNN_STATUS_SUCCESS) throw Error("cuda backend: cudnnCreate failed");
      if (cudnnSetStream(handle, stream) != CUDNN_STATUS_SUCCESS) throw Error("cuda backend: cudnnSetStream failed");
    }
    return handle;
  }

  const CachedGraph& graph_for(const GraphKey& key, DType kv_dtype, float scale, float softcap) {
    auto it = graphs.find(key);
    if (it != graphs.end()) return it->second;
    const auto t0 = std::chrono::steady_clock::now();
    const auto [s_q, s_kv, h_q, h_k, head_stride, d, kv_ld, right_bound, left_bound, dtype_code, scale_bits,
                softcap_bits, o_ld] = key;
    (void)o_ld;
    CachedGraph cached;
    bool ahead = false;  // built ahead by the builder thread
    if (auto p = pending.find(key); p != pending.end()) {
      std::optional<CachedGraph> built = p->second.get();
      pending.erase(p);
      if (built) {
        cached = std::move(*built);
        ahead = true;
      }
    }
    if (!ahead) cached = build_graph(key, kv_dtype, scale, softcap, get_handle());
    if (trace)
      std::fprintf(stderr, "[trace] cuDNN SDPA graph s_q %lld s_kv %lld h_q %lld h_k %lld d %lld softcap %g: %s in %.1f ms%s\n",
                   static_cast<long long>(s_q), static_cast<long long>(s_kv), static_cast<long long>(h_q),
                   static_cast<long long>(h_k), static_cast<long long>(d), softcap,
                   !cached.graph ? "no engine" : "built", ms_since(t0), ahead ? " (built ahead)" : "");
    const CachedGraph& result = graphs.emplace(key, std::move(cached)).first->second;
    // The next chunk of a causal prefill: s_q more keys, nothing else changed (a window trims the
    // keys, so windowed shapes are not guessed).
    if (result.graph && right_bound == 0 && left_bound == 0 && s_q >= kMinQueriesAhead) {
      GraphKey guess = key;
      guess[1] = s_kv + s_q;
      guess[4] = std::max(head_stride, guess[1] * kv_ld);
      if (guess[1] <= INT32_MAX && graphs.count(guess) == 0 && pending.count(guess) == 0)
        build_ahead(guess, kv_dtype, scale, softcap);
    }
    return result;
  }

  // Queues a build of `key` on the builder thread: each build waits for the one before it, so one
  // build at a time uses builder_handle, and the caller never waits here.
  void build_ahead(const GraphKey& key, DType kv_dtype, float scale, float softcap) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return;
    const std::shared_future<std::optional<CachedGraph>> before = last;
    std::shared_future<std::optional<CachedGraph>> next;
    try {
      next = std::async(std::launch::async, [this, before, key, kv_dtype, scale, softcap, device] {
               return built_elsewhere(before, key, kv_dtype, scale, softcap, device);
             }).share();
    } catch (const std::system_error&) {  // no thread to be had: the graph is built when it is needed
      return;
    }
    last = next;
    pending[key] = last;
  }

  // The builder thread's work: after the build queued before it, `key` on builder_handle.
  std::optional<CachedGraph> built_elsewhere(const std::shared_future<std::optional<CachedGraph>>& before,
                                             const GraphKey& key, DType kv_dtype, float scale, float softcap,
                                             int device) {
    if (before.valid()) before.wait();
    try {
      if (cudaSetDevice(device) != cudaSuccess) return std::nullopt;
      if (builder_handle == nullptr && cudnnCreate(&builder_handle) != CUDNN_STATUS_SUCCESS) {
        builder_handle = nullptr;
        return std::nullopt;
      }
      return build_graph(key, kv_dtype, scale, softcap, builder_handle);
    } catch (...) {  // the main thread builds it itself if it needs it
      return std::nullopt;
    }
  }

  CachedGraph build_graph(const GraphKey& key, DType kv_dtype, float scale, float softcap, cudnnHandle_t h) {
    const auto [s_q, s_kv, h_q, h_k, head_stride, d, kv_ld, right_bound, left_bound, dtype_code, scale_bits,
                softcap_bits, o_ld] = key;
    (void)dtype_code;
    (void)scale_bits;
    (void)softcap_bits;
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(kv_dtype == DType::BF16 ? fe::DataType_t::BFLOAT16 : fe::DataType_t::HALF)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    // Q and O: [s_q, h_q, d] in memory (token-major, as the engine's activations are). K and V: h_k
    // heads head_stride elements apart (GQA: cuDNN maps q head i to kv head i / (h_q / h_k)).
    const std::vector<int64_t> q_dim{1, h_q, s_q, d}, q_stride{s_q * h_q * d, d, h_q * d, 1};
    const std::vector<int64_t> kv_dim{1, h_k, s_kv, d}, kv_stride{h_k * head_stride, head_stride, kv_ld, 1};
    auto q = g->tensor(fe::graph::Tensor_attributes().set_name("Q").set_uid(kQ).set_dim(q_dim).set_stride(q_stride));
    auto k = g->tensor(fe::graph::Tensor_attributes().set_name("K").set_uid(kK).set_dim(kv_dim).set_stride(kv_stride));
    auto v = g->tensor(fe::graph::Tensor_attributes().set_name("V").set_uid(kV).set_dim(kv_dim).set_stride(kv_stride));
    auto opts = fe::graph::SDPA_attributes().set_name("prefill").set_generate_stats(true).set_attn_scale(scale);
    if (softcap > 0.0f) {
      // Gemma 2's soft-capping, tanh(s / cap) * cap after the scale, as a score modifier. The
      // frontend takes no mask attributes beside a modifier, so the same band mask (bottom-right,
      // the same bounds) follows the cap inside it, in the order the attributes would apply.
      const int64_t sq = s_q, skv = s_kv, rb = right_bound, lb = left_bound;
      opts.set_score_mod([softcap, sq, skv, rb, lb](std::shared_ptr<fe::graph::Graph> graph,
                                                    std::shared_ptr<fe::graph::Tensor_attributes> scores) {
        auto capped = fe::graph::attn::score_modifiers::Softcap().forward(
            graph, scores, std::make_shared<fe::graph::Tensor_attributes>(softcap));
        if (rb < 0) return capped;
        return fe::graph::attn::score_modifiers::sliding_window_mask(
            graph, capped, fe::DiagonalAlignment_t::BOTTOM_RIGHT,
            lb > 0 ? std::optional<int64_t>(lb) : std::nullopt, std::optional<int64_t>(rb), sq, skv, nullptr, nullptr);
      });
    } else if (right_bound >= 0) {
      opts.set_diagonal_alignment(fe::DiagonalAlignment_t::BOTTOM_RIGHT)
          .set_diagonal_band_right_bound(static_cast<int>(right_bound));
      if (left_bound > 0) opts.set_diagonal_band_left_bound(static_cast<int>(left_bound));
    }
    auto [o, stats] = g->sdpa(q, k, v, opts);
    const std::vector<int64_t> o_stride =
        o_ld > 0 ? std::vector<int64_t>{s_q * o_ld, d, o_ld, 1} : q_stride;
    o->set_output(true).set_uid(kO).set_dim(q_dim).set_stride(o_stride);
    stats->set_output(true).set_uid(kStats).set_data_type(fe::DataType_t::FLOAT)
        .set_dim({1, h_q, s_q, 1}).set_stride({h_q * s_q, s_q, 1, 1});
    CachedGraph cached;
    if (g->build(h, {fe::HeurMode_t::A}).is_good() && g->get_workspace_size(cached.workspace_bytes).is_good())
      cached.graph = std::move(g);
    return cached;
  }

  cudaStream_t stream;
  cudnnHandle_t handle = nullptr;
  Scratch workspace;  // bytes: the largest workspace any cached graph asked for
  size_t workspace_limit = 0;  // reserve_workspace's bytes; 0: not reserved, the workspace grows on demand
  std::map<GraphKey, CachedGraph> graphs;
  // The graph being built ahead (see above), and the builder thread's handle.
  static constexpr int64_t kMinQueriesAhead = 64;
  std::map<GraphKey, std::shared_future<std::optional<CachedGraph>>> pending;
  std::shared_future<std::optional<CachedGraph>> last;  // the build queued last
  cudnnHandle_t builder_handle = nullptr;               // the builder thread's
  // HEADINFER_TRACE=1 prints each graph build and its time (issue 11's first-use measurements).
  bool trace = std::getenv("HEADINFER_TRACE") != nullptr;
};

CudnnSdpa::CudnnSdpa(Device& device, cudaStream_t stream) : impl_(std::make_unique<Impl>(device, stream)) {}
CudnnSdpa::~CudnnSdpa() = default;
bool CudnnSdpa::available() { return true; }

namespace {

// What run() checks before it builds or takes a graph, and the graph's key: nullopt where cuDNN
// cannot compute the call's mask exactly, or where the heads go one call each (`per_head`).
std::optional<GraphKey> graph_key(const AttentionArgs& a, bool* per_head) {
  *per_head = false;
  if (a.kv.dtype != DType::BF16 && a.kv.dtype != DType::F16) return std::nullopt;
  const int64_t s_q = a.q.rows, d = a.head_dim, h_k = a.n_kv_heads, h_q = a.n_q_heads * h_k, kv_ld = a.kv.row_stride;
  // cuDNN's flash kernels take head dims in steps of 8 up to 256 and 16-byte aligned rows.
  if (s_q < 2 || d % 8 != 0 || d > 256 || kv_ld % 8 != 0 ||
      reinterpret_cast<uintptr_t>(a.kv.k) % 16 != 0 || reinterpret_cast<uintptr_t>(a.kv.v) % 16 != 0)
    return std::nullopt;
  // Heads too far apart for 32-bit offsets inside the kernel go one call per head (what the call
  // computes per head is the same).
  if (h_k > 1 && (a.kv_head_stride % 8 != 0 || h_k * a.kv_head_stride > INT32_MAX)) {
    *per_head = true;
    return std::nullopt;
  }
  const int64_t head_stride = h_k > 1 ? a.kv_head_stride : 0;
  const int64_t off = a.q_pos0 - a.k_pos0;
  const int64_t hi = std::min(a.n_keys, s_q + off);
  const int64_t lo = a.window > 0 ? std::max<int64_t>(0, off - a.window + 1) : 0;
  const int64_t s_kv = hi - lo;
  if (s_kv < s_q || s_kv > INT32_MAX) return std::nullopt;
  const int64_t off_trim = off - lo;
  const int64_t rb = off_trim - (s_kv - s_q);
  if (a.window > 0 && rb > a.window - 1) return std::nullopt;  // the last queries would see no key
  const bool masked = a.window > 0 || off_trim < s_kv - 1;
  const int64_t right_bound = masked ? rb : -1;
  const int64_t left_bound = masked && a.window > 0 ? a.window - rb : 0;
  uint32_t scale_bits = 0, softcap_bits = 0;
  std::memcpy(&scale_bits, &a.scale, sizeof(scale_bits));
  if (a.softcap > 0.0f) std::memcpy(&softcap_bits, &a.softcap, sizeof(softcap_bits));
  // O straight into a 16-bit out16 of the KV's dtype where cuDNN takes its layout (the view may have
  // no memory yet: prepare).
  const MatView& o16 = a.out16;
  const bool direct = o16.dtype == a.kv.dtype && o16.cols == h_q * d && o16.rows == s_q && o16.row_stride % 8 == 0 &&
                      reinterpret_cast<uintptr_t>(o16.data) % 16 == 0 && (o16.data != nullptr || a.out.data == nullptr);
  return GraphKey{s_q,         s_kv,       h_q, h_k, std::max(head_stride, s_kv * kv_ld), d, kv_ld, right_bound,
                  left_bound, static_cast<int64_t>(a.kv.dtype), scale_bits, softcap_bits,
                  direct ? o16.row_stride : 0};
}

}  // namespace

void CudnnSdpa::prepare(const AttentionArgs& a) {
  bool per_head = false;
  const std::optional<GraphKey> key = graph_key(a, &per_head);
  if (per_head) {
    for (int64_t i = 0; i < a.n_kv_heads; ++i) prepare(a.head(i));
    return;
  }
  if (!key || impl_->graphs.count(*key) != 0 || impl_->pending.count(*key) != 0) return;
  impl_->build_ahead(*key, a.kv.dtype, a.scale, a.softcap > 0.0f ? a.softcap : 0.0f);
}

bool CudnnSdpa::run(const AttentionArgs& a, Scratch& scratch, bool* wrote16) {
  if (wrote16 != nullptr) *wrote16 = false;
  bool per_head = false;
  const std::optional<GraphKey> found = graph_key(a, &per_head);
  if (per_head) {  // each head into out (F32); the caller rounds them into out16
    for (int64_t i = 0; i < a.n_kv_heads; ++i) {
      AttentionArgs h = a.head(i);
      h.out16 = MatView{};
      if (!run(h, scratch)) throw Error("cuda backend: cuDNN SDPA declined one head of a group it took");
    }
    return true;
  }
  if (!found) return false;
  const GraphKey& key = *found;
  const int64_t s_q = a.q.rows, d = a.head_dim, h_q = a.n_q_heads * a.n_kv_heads, kv_ld = a.kv.row_stride;
  const int64_t lo = a.window > 0 ? std::max<int64_t>(0, a.q_pos0 - a.k_pos0 - a.window + 1) : 0;  // as graph_key
  const CachedGraph& cached = impl_->graph_for(key, a.kv.dtype, a.scale, a.softcap > 0.0f ? a.softcap : 0.0f);
  if (!cached.graph) return false;
  // Declining depends on the shape alone, so every placement still takes the same kernel.
  if (impl_->workspace_limit > 0 && static_cast<size_t>(cached.workspace_bytes) > impl_->workspace_limit) return false;

  const size_t vec16 = (static_cast<size_t>(s_q * h_q * d) * 2 + 255) / 256 * 256;
  char* base = static_cast<char*>(scratch.get(scratch_bytes(s_q * h_q, d)));
  void* q16 = base;            // BF16/F16 [s_q, h_q * d]
  void* o16 = base + vec16;    // BF16/F16 [s_q, h_q * d]
  float* stats = reinterpret_cast<float*>(base + 2 * vec16);  // F32 [h_q, s_q]
  void* ws = cached.workspace_bytes > 0 ? impl_->workspace.get(static_cast<size_t>(cached.workspace_bytes)) : nullptr;

  const size_t elem = dtype_size(a.kv.dtype);
  const bool direct = key[12] > 0;  // O into the caller's 16-bit out16 (graph_key)
  std::unordered_map<fe::graph::Tensor_attributes::uid_t, void*> pack{
      {kQ, q16},
      {kK, const_cast<char*>(static_cast<const char*>(a.kv.k)) + lo * kv_ld * elem},
      {kV, const_cast<char*>(static_cast<const char*>(a.kv.v)) + lo * kv_ld * elem},
      {kO, direct ? a.out16.data : o16},
      {kStats, stats}};
  sdpa_pack_q(a.q, h_q * d, q16, a.kv.dtype, impl_->stream);
  auto status = cached.graph->execute(impl_->get_handle(), pack, ws);
  if (!status.is_good()) throw Error("cuda backend: cuDNN SDPA failed: " + status.get_message());
  if (direct) {
    sdpa_unpack_lse(stats, s_q, h_q, a.lse, impl_->stream);
    if (wrote16 != nullptr) *wrote16 = true;
  } else {
    sdpa_unpack_out(o16, stats, a.kv.dtype, s_q, h_q, d, a.out, a.lse, impl_->stream);
  }
  return true;
}

void CudnnSdpa::reserve_workspace(size_t bytes) {
  impl_->workspace.get(bytes);
  impl_->workspace_limit = bytes;
}

void CudnnSdpa::release_workspace() {
  impl_->workspace.release();
  impl_->workspace_limit = 0;
}

void CudnnSdpa::warm_up(DType kv_dtype, int64_t head_dim, int64_t q_heads_per_kv_head, float scale) {
  if (kv_dtype != DType::BF16 && kv_dtype != DType::F16) return;
  if (head_dim % 8 != 0 || head_dim > 256) return;
  // A small causal graph of the kind every prefill chunk uses: the first graph of a process also
  // loads cuDNN's engines and starts its run-time compiler (H100: 108 ms against 78 ms for the next
  // graph), which is then paid at start-up rather than in the first prefill.
  const int64_t s = 128;
  uint32_t scale_bits = 0;
  std::memcpy(&scale_bits, &scale, sizeof(scale_bits));
  const GraphKey key{s, s, q_heads_per_kv_head, 1, s * head_dim, head_dim, head_dim, 0, 0,
                     static_cast<int64_t>(kv_dtype), scale_bits, 0, 0};
  // On the builder thread, so it overlaps the weights' upload; the first prepared or inline build
  // after it finds cuDNN set up.
  if (impl_->graphs.count(key) == 0 && impl_->pending.count(key) == 0) impl_->build_ahead(key, kv_dtype, scale, 0.0f);
}

#else  // no cuDNN in this build: every call takes the CUDA-core kernel

struct CudnnSdpa::Impl {};
CudnnSdpa::CudnnSdpa(Device&, cudaStream_t) {}
CudnnSdpa::~CudnnSdpa() = default;
bool CudnnSdpa::available() { return false; }
bool CudnnSdpa::run(const AttentionArgs&, Scratch&, bool* wrote16) {
  if (wrote16 != nullptr) *wrote16 = false;
  return false;
}
void CudnnSdpa::prepare(const AttentionArgs&) {}
void CudnnSdpa::reserve_workspace(size_t) {}
void CudnnSdpa::release_workspace() {}
void CudnnSdpa::warm_up(DType, int64_t, int64_t, float) {}

#endif

}  // namespace headinfer::cuda
