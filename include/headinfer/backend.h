#pragma once
// The backend interface: memory, and the op set every backend implements. The CPU backend
// (backend/cpu/) is the reference; the CUDA backend implements the same ops. Ops take
// non-owning views with explicit strides; attention returns the log-sum-exp next to its output
// so that parts of one head's attention merge exactly.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>

#include "headinfer/config.h"
#include "headinfer/dtype.h"
#include "headinfer/error.h"

namespace headinfer {

class Transfer;          // headinfer/transfer.h
struct TransferOptions;  // headinfer/transfer.h

// Row-major 2-D view: `rows` x `cols` elements of `dtype`, rows `row_stride` elements apart.
struct MatView {
  void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;

  template <typename T>
  T* row(int64_t r) const { return static_cast<T*>(data) + r * row_stride; }
  MatView slice_rows(int64_t begin, int64_t n) const {
    return {static_cast<char*>(data) + begin * row_stride * static_cast<int64_t>(dtype_size(dtype)), dtype, n, cols,
            row_stride};
  }
  MatView slice_cols(int64_t begin, int64_t n) const {
    return {static_cast<char*>(data) + begin * static_cast<int64_t>(dtype_size(dtype)), dtype, rows, n, row_stride};
  }
};

// A weight matrix [out_features, in_features] (nn.Linear layout), any checkpoint dtype.
struct WeightView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t out_features = 0;
  int64_t in_features = 0;
};

// A vector parameter (norm weight, bias) [n].
struct VecView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t n = 0;
};

// RoPE for one model: the per-pair inverse frequencies [rotary_dim/2] (fp32, as transformers
// computes them for the configured scaling) and the factor applied to cos and sin. The first
// rotary_dim of each head's head_dim dims rotate (rotate-half within them); the rest pass
// unchanged (phi3's partial rotary). rotary_dim 0 means head_dim.
struct RopeTable {
  const float* inv_freq = nullptr;
  int64_t head_dim = 0;
  float attention_factor = 1.0f;
  int64_t rotary_dim = 0;
  int64_t rotary() const { return rotary_dim > 0 ? rotary_dim : head_dim; }
};

// One kv head's stored keys and values: K and V [n_keys, head_dim], rows `row_stride` apart.
struct KvHeadView {
  const void* k = nullptr;
  const void* v = nullptr;
  DType dtype = DType::F32;
  int64_t row_stride = 0;
};

// Attention of a chunk of queries against a contiguous run of the keys of n_kv_heads adjacent kv
// heads (one call per head group, so a backend can launch once for all of them).
// Query t sits at absolute position q_pos0 + t; key j at k_pos0 + j. Key j is visible to query t
// when k_pos <= q_pos (causal) and, with window > 0, q_pos - k_pos < window.
// kv head i's query heads are columns [i * n_q_heads * head_dim, (i + 1) * n_q_heads * head_dim) of
// q and out and [i * n_q_heads, (i + 1) * n_q_heads) of lse; its K and V start kv_head_stride
// elements after kv head i - 1's. Each head's result is the one a call for that head alone gives,
// bit for bit, so how heads are grouped never changes the numbers.
struct AttentionArgs {
  MatView q;            // F32 [n_queries, n_kv_heads * n_q_heads * head_dim]
  KvHeadView kv;        // [n_keys, head_dim] of kv head 0
  int64_t n_keys = 0;
  int64_t head_dim = 0;
  int64_t n_q_heads = 0;  // GQA: query heads per kv head
  int64_t n_kv_heads = 1;
  int64_t kv_head_stride = 0;  // elements from one kv head's K (and V) to the next's
  // kv heads of the whole layer (the model's), which a backend may size its work split by; never
  // the call's n_kv_heads, so a head computes the same however heads are grouped into calls.
  // 0: n_kv_heads.
  int64_t layer_kv_heads = 0;
  int64_t q_pos0 = 0;
  int64_t k_pos0 = 0;
  int64_t window = 0;
  float scale = 1.0f;
  float softcap = 0.0f;  // > 0: scores := tanh(scores * scale / softcap) * softcap (gemma2)
  // Keys [0, settled_keys) of the view were in place before the op queued just before this call
  // began, so a backend may start reading them while that op still runs (store_and_attend_heads:
  // the copy before its attention writes only the chunk's new rows). 0: no such promise.
  int64_t settled_keys = 0;
  MatView out;          // F32 [n_queries, n_kv_heads * n_q_heads * head_dim]
  MatView lse;          // F32 [n_queries, n_kv_heads * n_q_heads]: natural log-sum-exp of the scaled
                        //     scores (-inf where a query sees no key of this part)
  // Optional (data null: none), where Ops::attention_out16() says so: the output in 16 bits,
  // [n_queries, n_kv_heads * n_q_heads * head_dim], each element out's F32 value rounded once; out
  // is then scratch the backend may use or leave as it was (o_proj reads out16).
  MatView out16;

  // The arguments of kv head i alone (n_kv_heads = 1).
  AttentionArgs head(int64_t i) const {
    AttentionArgs a = *this;
    const auto e = static_cast<int64_t>(dtype_size(kv.dtype));
    a.q = q.slice_cols(i * n_q_heads * head_dim, n_q_heads * head_dim);
    a.out = out.slice_cols(i * n_q_heads * head_dim, n_q_heads * head_dim);
    a.lse = lse.slice_cols(i * n_q_heads, n_q_heads);
    if (out16.data != nullptr) a.out16 = out16.slice_cols(i * n_q_heads * head_dim, n_q_heads * head_dim);
    a.kv.k = static_cast<const char*>(kv.k) + i * kv_head_stride * e;
    a.kv.v = static_cast<const char*>(kv.v) + i * kv_head_stride * e;
    a.layer_kv_heads = layer_kv_heads > 0 ? layer_kv_heads : n_kv_heads;
    a.n_kv_heads = 1;
    return a;
  }
};

// One output of Ops::linear_multi: y = x W^T (+ bias), or y += x W^T with accumulate.
struct LinearOut {
  const WeightView* w = nullptr;
  const VecView* bias = nullptr;  // nullptr: none
  MatView y;
  // y += x W^T (F32 y, no bias): only where Ops::linear_accumulates() says the backend does it.
  bool accumulate = false;
};

// The largest op calls a model will make (Ops::reserve_workspace).
struct OpsWorkspaceSizes {
  int64_t max_tokens = 0;        // rows of a linear / queries of an attention call
  int64_t max_in_features = 0;   // widest linear input
  DType weight_dtype = DType::F32;
  int64_t max_q_heads = 0;       // query heads per kv head (GQA group)
  int64_t max_kv_heads = 1;      // kv heads of one attention call
  int64_t vocab = 0;             // logits of one sample_token call
  int64_t head_dim = 0;
};

class Ops {
 public:
  virtual ~Ops() = default;
  // out[t] = table[ids[t]]; ids on the host. out F32 [T, hidden].
  virtual void embedding(std::span<const int32_t> ids, const WeightView& table, const MatView& out) = 0;
  // embedding() of one id that is already in device memory (the last step's pick, which no host
  // has read yet), so a step can be queued behind the one that picks its token. Nothing is checked
  // on the host: the id must be in the table by construction. out F32 [1, hidden].
  virtual void embedding_device_id(const int32_t* device_id, const WeightView& table, const MatView& out) = 0;
  // out = x / sqrt(mean(x^2) + eps) * weight, per row. x and out may alias. x is F32; out is F32,
  // or the linear_input_dtype() of a backend that has one (then out does not alias x): each
  // element rounded from the F32 value the F32 out would hold.
  virtual void rms_norm(const MatView& x, const VecView& weight, float eps, const MatView& out) = 0;
  // x += y, then out = rms_norm(x): what add() then rms_norm() give, bit for bit, in one pass where
  // the backend can (the residual add and the next norm of a layer). out does not alias x or y.
  virtual void add_rms_norm(const MatView& x, const MatView& y, const VecView& weight, float eps,
                            const MatView& out) {
    add(x, y);
    rms_norm(x, weight, eps, out);
  }
  // y = x W^T (+ bias). x F32 [T, in] (or W's own 16-bit dtype where linear_input_dtype() says
  // so), y F32 [T, out]; where x is in W's 16-bit dtype and there is no bias, y may be in that
  // dtype too (each element the F32 y's, rounded once).
  virtual void linear(const MatView& x, const WeightView& w, const VecView* bias, const MatView& y) = 0;
  // The dtype in which linear() takes x for n_tokens rows and weights of `weight_dtype` without
  // converting it first: F32, or W's 16-bit dtype where the backend rounds x to it anyway (the
  // CUDA tensor-core path). rms_norm, add_rms_norm, silu_mul and gelu_tanh_mul can write their out
  // in it, so the rounding happens in the op that makes x instead of in a pass of its own; the
  // numbers are the same.
  virtual DType linear_input_dtype(int64_t n_tokens, DType weight_dtype) const { return DType::F32; }
  // rows x cols of `dtype` (a linear_input_dtype() other than F32) in the ops' own scratch, the
  // buffer linear() rounds F32 inputs into: for an op's out that the next linear() reads. Valid
  // until the next linear() or linear_multi() of an F32 input.
  virtual MatView linear_input_scratch(int64_t rows, int64_t cols, DType dtype) {
    throw Error("this backend takes linear inputs in F32 only");
  }
  // Several linears of one input (q/k/v, gate/up), at most three: one launch where the backend
  // can, each output exactly what linear() gives it.
  virtual void linear_multi(const MatView& x, std::span<const LinearOut> outs) {
    for (const LinearOut& o : outs) {
      if (o.accumulate) throw Error("this backend does not add a linear's output into y (linear_accumulates)");
      linear(x, *o.w, o.bias, o.y);
    }
  }
  // Whether linear_multi() takes a LinearOut with accumulate for n_tokens rows of x and weights of
  // `weight_dtype`, adding the product into y in the GEMM itself (the residual adds of o_proj and
  // down_proj, without an output of their own to write and read back). Each element is then
  // fl(y + s), s the GEMM's fp32 sum: what linear() and add() give where both GEMMs sum alike.
  virtual bool linear_accumulates(int64_t n_tokens, DType weight_dtype) const { return false; }
  // Plans the GEMMs linear_multi(x, outs) would run, so that its first call does not wait for
  // them: the CUDA backend picks each new shape's cuBLASLt algorithm and runs it once (which loads
  // its kernel) on a thread and stream of its own. That run reads x and the weights as they are
  // (they need not hold data yet: the Engine calls this before the weights are copied) and writes
  // garbage over the outputs' memory. The caller must leave those buffers alone until
  // wait_prepared() returns (the next linear waits for it too); results of later calls are the
  // same with or without it.
  virtual void prepare_linear(const MatView& x, std::span<const LinearOut> outs) {}
  // Returns once the work prepare_linear queued is done.
  virtual void wait_prepared() {}
  // In place, rotate-half convention: x F32 [T, n_heads * head_dim], row t at position pos0 + t.
  virtual void rope(const MatView& x, int64_t n_heads, const RopeTable& rope, int64_t pos0) = 0;
  // rope(q, n_q_heads, table, pos0) and rope(k, n_kv_heads, table, pos0) (q and k of the same rows):
  // one launch where the backend can, every element rotated exactly as rope() rotates it.
  virtual void rope_qk(const MatView& q, int64_t n_q_heads, const MatView& k, int64_t n_kv_heads,
                       const RopeTable& table, int64_t pos0) {
    rope(q, n_q_heads, table, pos0);
    rope(k, n_kv_heads, table, pos0);
  }
  virtual void attention(const AttentionArgs& args) = 0;
  // Whether attention() of n_queries rows may be handed an AttentionArgs::out16 (a 16-bit output for
  // o_proj to read as it is): where the backend writes it without an F32 pass (the CUDA cuDNN path
  // writes its 16-bit O there). Backends that say no throw on an out16.
  virtual bool attention_out16(int64_t n_queries) const { return false; }
  // Plans the call attention(args) would make, for its shapes alone (the views' memory is not
  // read, and may be null), so that its first run does not wait for the plan: the CUDA backend
  // builds the cuDNN graph on a thread of its own. Runs nothing; the result of a later call is the
  // same with or without it.
  virtual void prepare_attention(const AttentionArgs& args) {}
  // Merges part b into part a: (out_a, lse_a) := softmax-weighted union of a and b.
  virtual void attention_merge(const MatView& out_a, const MatView& lse_a, const MatView& out_b,
                               const MatView& lse_b, int64_t head_dim) = 0;
  // out = silu(gate) * up, elementwise, in fp32. An F32 out may alias gate; a 16-bit out (as
  // rms_norm's) aliases neither input. gate and up are F32, or (linear()'s 16-bit y) both in the
  // 16-bit dtype of out.
  virtual void silu_mul(const MatView& gate, const MatView& up, const MatView& out) = 0;
  // out = gelu_tanh(gate) * up (torch's gelu approximate='tanh'), elementwise. out as silu_mul's.
  virtual void gelu_tanh_mul(const MatView& gate, const MatView& up, const MatView& out) = 0;
  // The MLP's gated input: linear_multi(x, gate_up) (gate first, then up), then silu_mul or
  // gelu_tanh_mul of the two into out, bit for bit; in one launch where the backend can (the CUDA
  // decode GEMV computes a gate row and its up row in one warp and writes the product only).
  // out as the activation's out: F32 (it may alias gate_up[0].y), or a 16-bit
  // linear_input_scratch() when x is already in the weights' 16-bit dtype. gate_up's outputs may be
  // left unwritten.
  virtual void linear_gated(const MatView& x, std::span<const LinearOut, 2> gate_up, Activation act,
                            const MatView& out) {
    linear_multi(x, gate_up);
    if (act == Activation::GeluTanh) {
      gelu_tanh_mul(gate_up[0].y, gate_up[1].y, out);
    } else {
      silu_mul(gate_up[0].y, gate_up[1].y, out);
    }
  }
  // x *= s (gemma's embedding scale); x F32.
  virtual void scale(const MatView& x, float s) = 0;
  // x := tanh(x / cap) * cap, elementwise in fp32 (gemma's final logit soft-capping).
  virtual void softcap(const MatView& x, float cap) = 0;
  // x += y
  virtual void add(const MatView& x, const MatView& y) = 0;
  // Copies a view's rows into another view of the same shape (dtype conversion allowed).
  virtual void copy(const MatView& src, const MatView& dst) = 0;
  // n_heads copies at once: column block i of src ([rows, n_heads * dst.cols]) goes to the view
  // dst moved by i * dst_head_stride elements; each element as copy() converts it.
  virtual void copy_heads(const MatView& src, int64_t n_heads, const MatView& dst, int64_t dst_head_stride) {
    const auto e = static_cast<int64_t>(dtype_size(dst.dtype));
    for (int64_t i = 0; i < n_heads; ++i) {
      MatView d = dst;
      d.data = static_cast<char*>(dst.data) + i * dst_head_stride * e;
      copy(src.slice_cols(i * dst.cols, dst.cols), d);
    }
  }
  // copy_heads(k_src, n_heads, k_dst, dst_head_stride), then the same for v (a step's keys and
  // values into the cache): one launch where the backend can, each element as copy_heads() gives it.
  virtual void copy_heads_kv(const MatView& k_src, const MatView& v_src, int64_t n_heads, const MatView& k_dst,
                             const MatView& v_dst, int64_t dst_head_stride) {
    copy_heads(k_src, n_heads, k_dst, dst_head_stride);
    copy_heads(v_src, n_heads, v_dst, dst_head_stride);
  }
  // out[0] = the index of the largest element of x (F32 [1, n], device memory), the first one on
  // ties; NaNs lose, unless x[0] is NaN (then 0): the host sampler's argmax, on the device.
  // out: I32 device memory.
  virtual void argmax(const MatView& x, int32_t* out) = 0;
  // One draw from softmax(x / temperature) restricted to the top_k largest (0: all) and then to
  // the smallest most-likely prefix whose mass reaches top_p (1: all), x F32 [1, n] device
  // memory; `uniform` in [0, 1) picks the token (the caller's seeded generator draws it). out: I32
  // device memory. Candidates are ordered by value, then index, as the host sampler orders them.
  // Only where samples_on_device(); the others sample on the host from the logits.
  virtual bool samples_on_device() const { return false; }
  virtual void sample_token(const MatView& x, float temperature, int64_t top_k, float top_p, double uniform,
                            int32_t* out) {
    throw Error("this backend samples on the host");
  }
  // Sizes the ops' own scratch for the largest calls to come, so the scratch counts against the
  // device budget before the KV cache is planned and never grows (or synchronises) in the token
  // loop. Backends without scratch ignore it.
  // Each Model reserves once when it is built and releases once when it is gone; the scratch is
  // given back to the device when the last reservation is released (so a device that outlives its
  // models holds nothing, and the buffers a live model's step graphs recorded are never freed).
  virtual void reserve_workspace(const OpsWorkspaceSizes& sizes) {}
  virtual void release_workspace() {}
  // The device bytes reserve_workspace(sizes) takes, known before anything is loaded (the
  // pre-load placement check counts them with the activations).
  virtual size_t workspace_bytes(const OpsWorkspaceSizes& sizes) const { return 0; }
};

// A device: where weights, activations and GPU-tier head blocks live, and the ops that run
// there. Every byte allocated through it counts against its budget.
class Device {
 public:
  virtual ~Device() = default;
  virtual std::string name() const = 0;
  virtual Ops& ops() = 0;
  // Device memory; throws headinfer::Error when the budget would be exceeded.
  virtual void* alloc(size_t bytes, const char* what) = 0;
  virtual void free(void* p) = 0;
  virtual size_t bytes_in_use() const = 0;
  virtual size_t peak_bytes() const = 0;
  // Copies device memory to the host and waits: only for results leaving the engine (logits).
  virtual void read_to_host(void* host_dst, const void* device_src, size_t bytes) = 0;
  // A read that waits only for the work queued before it, so more work can be queued first
  // (Engine::decode_greedy's next step). queue_read copies `bytes` (at most kReadBytes) of device
  // memory into read slot `slot` once the work queued so far is done; wait_read(slot) waits for
  // that copy alone and hands the bytes over. Two slots: one read may wait while the next is
  // queued. This default reads at once (a device whose queue is the caller).
  static constexpr int kReadSlots = 2;
  static constexpr size_t kReadBytes = 8;
  virtual void queue_read(int slot, const void* device_src, size_t bytes) {
    check_read(slot, bytes);
    read_to_host(read_slots_[slot], device_src, bytes);
  }
  virtual void wait_read(int slot, void* host_dst, size_t bytes) {
    check_read(slot, bytes);
    std::memcpy(host_dst, read_slots_[slot], bytes);
  }
  virtual void write_from_host(void* device_dst, const void* host_src, size_t bytes) = 0;
  // Bytes alloc() may hand out in all; 0: unlimited.
  virtual size_t memory_budget() const = 0;
  // A new transfer side for this device (headinfer/transfer.h): its compute stream is the stream
  // ops() runs on, its copy streams feed this device's memory, its host tier is memory that
  // device can copy from asynchronously (pinned on CUDA). One per KV cache, so caches share no
  // stream state.
  virtual std::unique_ptr<Transfer> make_transfer(const TransferOptions& options) = 0;
  // The element type of KV head blocks for weights of `weight_dtype`: what this device's attention
  // reads fastest while keeping the backend's exactness contract.
  virtual DType kv_dtype(DType weight_dtype) const = 0;

  // Step graphs (CUDA graphs): between begin_graph() and end_graph() the work ops() queue on the
  // compute stream is recorded, not run; end_graph() then launches it as one unit (updating the
  // previous step's executable graph in place when only parameters changed). Only for work on
  // the compute stream alone: no copy streams, no host waits. begin_graph() returns false when the
  // device has no graphs (or recording failed before); end_graph() returns false, having run
  // nothing, when the recording failed, and the caller runs the step again without a graph.
  // abort_graph() ends a recording whose step threw, discarding it.
  virtual bool begin_graph() { return false; }
  virtual bool end_graph() { return false; }
  virtual void abort_graph() {}

 protected:
  static void check_read(int slot, size_t bytes) {
    if (slot < 0 || slot >= kReadSlots || bytes > kReadBytes) throw Error("device read: bad slot or size");
  }

 private:
  unsigned char read_slots_[kReadSlots][kReadBytes] = {};
};

struct CpuDeviceOptions {
  int n_threads = 0;            // 0: hardware concurrency
  size_t memory_budget = 0;     // 0: unlimited
  // Test aid: device allocations after the first n are refused as an out-of-memory would be
  // (the GPU running out inside a run); -1: never.
  int64_t alloc_fail_after = -1;
};
std::unique_ptr<Device> make_cpu_device(const CpuDeviceOptions& options = {});

// A device allocation released on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Device& device, size_t bytes, const char* what)
      : device_(&device), data_(device.alloc(bytes, what)), bytes_(bytes) {}
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      device_ = o.device_;
      data_ = o.data_;
      bytes_ = o.bytes_;
      o.device_ = nullptr;
      o.data_ = nullptr;
      o.bytes_ = 0;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const { return static_cast<T*>(data_); }
  void reset() {
    if (device_ != nullptr && data_ != nullptr) device_->free(data_);
    device_ = nullptr;
    data_ = nullptr;
    bytes_ = 0;
  }

 private:
  Device* device_ = nullptr;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace headinfer
