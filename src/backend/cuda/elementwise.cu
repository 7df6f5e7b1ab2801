// Row-wise elementwise ops: embedding lookup, SiLU gate, residual add, strided copy with dtype
// conversion. All memory-bound; one thread per element, rows on grid.y so strides cost nothing.
#include <algorithm>

#include "cuda_common.h"
#include "cuda_ops.h"

namespace headinfer::cuda {
namespace {

constexpr int kThreads = 256;

// grid.y is capped at 65535; kernels loop over rows in steps of gridDim.y.
dim3 row_grid(int64_t rows, int64_t cols) {
  return dim3(grid_1d(cols, kThreads), static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(rows, 1), 65535)));
}

template <typename T>
__global__ void embedding_kernel(const int32_t* ids, int64_t n_ids, const T* table, int64_t hidden, float* out,
                                 int64_t out_stride) {
  pdl_wait();
  pdl_trigger();
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= hidden) return;
  for (int64_t t = blockIdx.y; t < n_ids; t += gridDim.y)
    out[t * out_stride + c] = to_f32(table[static_cast<int64_t>(ids[t]) * hidden + c]);
}

// act(gate) * up per element (silu or torch's gelu(approximate='tanh'), as the CPU reference):
// four columns a thread, in 16-byte loads where vec4 (the views allow it), element by element
// otherwise; the same arithmetic either way. A fifth of an 8K prefill's element-wise time was this
// pass at one column a thread.
template <bool GELU>
__device__ __forceinline__ float gated(float g, float u) {
  if constexpr (GELU) {
    return gelu_tanh_times(g, u, kGeluTanhBeta);
  } else {
    return silu_times(g, u);
  }
}

// gate and up are G: F32, or 16-bit where the GEMM that made them rounded its sums (prefill).
template <typename G, typename O, bool GELU>
__global__ void gated_kernel(const G* gate, int64_t gate_stride, const G* up, int64_t up_stride, O* out,
                             int64_t out_stride, int64_t rows, int64_t cols, bool vec4) {
  pdl_wait();
  pdl_trigger();
  const int64_t c = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) * 4;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const G* g = gate + r * gate_stride + c;
    const G* u = up + r * up_stride + c;
    O* o = out + r * out_stride + c;
    if (vec4) {
      const float4 gv = load4(g), uv = load4(u);
      store4(o, make_float4(gated<GELU>(gv.x, uv.x), gated<GELU>(gv.y, uv.y), gated<GELU>(gv.z, uv.z),
                            gated<GELU>(gv.w, uv.w)));
    } else {
      for (int64_t i = 0; i < 4 && c + i < cols; ++i) o[i] = from_f32<O>(gated<GELU>(to_f32(g[i]), to_f32(u[i])));
    }
  }
}

// x := x * s (scale) or tanh(x / cap) * cap (softcap), per element.
__global__ void scale_kernel(float* x, int64_t x_stride, int64_t rows, int64_t cols, float s) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) x[r * x_stride + c] = __fmul_rn(x[r * x_stride + c], s);
}

__global__ void softcap_kernel(float* x, int64_t x_stride, int64_t rows, int64_t cols, float cap) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
    x[r * x_stride + c] = __fmul_rn(tanhf(__fdiv_rn(x[r * x_stride + c], cap)), cap);
}

__global__ void add_kernel(float* x, int64_t x_stride, const float* y, int64_t y_stride, int64_t rows, int64_t cols) {
  pdl_wait();
  pdl_trigger();
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) x[r * x_stride + c] += y[r * y_stride + c];
}

template <typename S, typename D>
__global__ void copy_kernel(const S* src, int64_t src_stride, D* dst, int64_t dst_stride, int64_t rows,
                            int64_t cols) {
  pdl_wait();
  pdl_trigger();
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
    dst[r * dst_stride + c] = from_f32<D>(to_f32(src[r * src_stride + c]));
}

// copy_kernel for column blocks of heads at once: grid.z is the head. Heads z < n_a copy from src to
// dst, the others (copy_heads_kv's values) from src_b to dst_b; block z's columns start at
// (z mod n_a) * cols of its source and (z mod n_a) * dst_head_stride of its destination. PER 4
// (prefill): four columns a thread (16-byte loads where vec4), blockDim.y rows a block, since a head
// is 128 columns and a block of one such row left half its threads idle. PER 1 (a decode step's one
// row): a column a thread, as before (an 8K decode step was 0.02 ms slower with four, H100).
template <typename S, typename D, int PER>
__global__ void copy_heads_kernel(const S* src, const S* src_b, int64_t src_stride, D* dst, D* dst_b,
                                  int64_t dst_stride, int64_t rows, int64_t cols, int64_t dst_head_stride,
                                  unsigned n_a, bool vec4) {
  pdl_wait();
  pdl_trigger();
  const int64_t c = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) * PER;
  if (c >= cols) return;
  const bool b = blockIdx.z >= n_a;
  const unsigned z = b ? blockIdx.z - n_a : blockIdx.z;
  const S* s = (b ? src_b : src) + z * cols + c;
  D* d = (b ? dst_b : dst) + z * dst_head_stride + c;
  const int64_t step = int64_t{gridDim.y} * blockDim.y;
  for (int64_t r = blockIdx.y * int64_t{blockDim.y} + threadIdx.y; r < rows; r += step) {
    if constexpr (PER == 4) {
      convert4(s + r * src_stride, d + r * dst_stride, cols - c, vec4);
    } else {
      d[r * dst_stride] = from_f32<D>(to_f32(s[r * src_stride]));
    }
  }
}

void require_f32(const MatView& m, const char* op) {
  if (m.dtype != DType::F32) throw Error(std::string("cuda backend: ") + op + " needs F32 activations");
}

// A gated activation's checks: inputs of one shape and dtype (F32, or 16-bit with a 16-bit out of
// that dtype), out F32 or 16-bit (not over an input).
void check_gated(const MatView& gate, const MatView& up, const MatView& out, const char* op) {
  if (gate.dtype != up.dtype || (gate.dtype != DType::F32 && out.dtype != gate.dtype))
    throw Error(std::string("cuda backend: ") + op + " needs F32 inputs, or 16-bit inputs and out of one dtype");
  if (up.rows != gate.rows || up.cols != gate.cols || out.rows != gate.rows || out.cols != gate.cols)
    throw Error(std::string("cuda backend: ") + op + " shape mismatch");
  if (out.dtype != DType::F32 && (out.data == gate.data || out.data == up.data))
    throw Error(std::string("cuda backend: ") + op + " with a 16-bit out cannot write over its inputs");
}

}  // namespace

void CudaOps::embedding(std::span<const int32_t> ids, const WeightView& table, const MatView& out) {
  require_f32(out, "embedding");
  const auto n = static_cast<int64_t>(ids.size());
  if (out.rows != n || out.cols != table.in_features) throw Error("cuda backend: embedding shape mismatch");
  for (int32_t id : ids)
    if (id < 0 || id >= table.out_features)
      throw Error("token id " + std::to_string(id) + " is outside the vocabulary (" +
                  std::to_string(table.out_features) + " tokens)");
  if (n == 0) return;
  auto* d_ids = static_cast<int32_t*>(ids_.get(static_cast<size_t>(n) * sizeof(int32_t)));
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  HEADINFER_CUDA_CHECK(cudaStreamIsCapturing(stream_, &capture));
  const void* src = ids.data();
  if (capture != cudaStreamCaptureStatusNone) {
    // A graph records the copy's source address, and a recorded copy needs pinned memory: the ids
    // go through the pinned buffer, which the graph reads when it is launched right after.
    if (n > ids_pinned_capacity_) throw Error("cuda backend: more ids than reserve_workspace allowed");
    std::copy(ids.begin(), ids.end(), ids_pinned_);
    src = ids_pinned_;
  }
  // From pageable memory this returns once `ids` is staged, so the caller's span may go away.
  HEADINFER_CUDA_CHECK(
      cudaMemcpyAsync(d_ids, src, static_cast<size_t>(n) * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  dispatch_dtype(table.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_pdl(embedding_kernel<T>, row_grid(n, table.in_features), kThreads, 0, stream_, d_ids, n,
               static_cast<const T*>(table.data), table.in_features, static_cast<float*>(out.data), out.row_stride);
  });
  HEADINFER_CUDA_CHECK_LAUNCH();
}

void CudaOps::embedding_device_id(const int32_t* device_id, const WeightView& table, const MatView& out) {
  require_f32(out, "embedding");
  if (out.rows != 1 || out.cols != table.in_features) throw Error("cuda backend: embedding shape mismatch");
  dispatch_dtype(table.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_pdl(embedding_kernel<T>, row_grid(1, table.in_features), kThreads, 0, stream_, device_id, int64_t{1},
               static_cast<const T*>(table.data), table.in_features, static_cast<float*>(out.data), out.row_stride);
  });
  HEADINFER_CUDA_CHECK_LAUNCH();
}

void CudaOps::gated_mul(const MatView& gate, const MatView& up, const MatView& out, bool gelu) {
  check_gated(gate, up, out, gelu ? "gelu_tanh_mul" : "silu_mul");
  if (gate.rows == 0 || gate.cols == 0) return;
  auto launch = [&](auto g_tag, auto o_tag) {
    using G = typename decltype(g_tag)::type;
    using O = typename decltype(o_tag)::type;
    const bool vec4 = vec4_ok(gate.data, gate.row_stride, gate.cols, sizeof(G)) &&
                      vec4_ok(up.data, up.row_stride, up.cols, sizeof(G)) &&
                      vec4_ok(out.data, out.row_stride, out.cols, sizeof(O));
    launch_pdl(gelu ? gated_kernel<G, O, true> : gated_kernel<G, O, false>, grid_rows4(gate.rows, gate.cols, kThreads),
               kThreads, 0, stream_, static_cast<const G*>(gate.data), gate.row_stride,
               static_cast<const G*>(up.data), up.row_stride, static_cast<O*>(out.data), out.row_stride, gate.rows,
               gate.cols, vec4);
  };
  dispatch_dtype(out.dtype, [&](auto o_tag) {
    if (gate.dtype == DType::F32) {
      launch(TypeTag<float>{}, o_tag);
    } else {
      launch(o_tag, o_tag);  // check_gated: 16-bit inputs come with an out of their dtype
    }
  });
  HEADINFER_CUDA_CHECK_LAUNCH();
}

void CudaOps::silu_mul(const MatView& gate, const MatView& up, const MatView& out) { gated_mul(gate, up, out, false); }

void CudaOps::gelu_tanh_mul(const MatView& gate, const MatView& up, const MatView& out) {
  gated_mul(gate, up, out, true);
}

void CudaOps::scale(const MatView& x, float s) {
  require_f32(x, "scale");
  if (x.rows == 0 || x.cols == 0) return;
  scale_kernel<<<row_grid(x.rows, x.cols), kThreads, 0, stream_>>>(static_cast<float*>(x.data), x.row_stride, x.rows,
                                                                   x.cols, s);
  HEADINFER_CUDA_CHECK_LAUNCH();
}

void CudaOps::softcap(const MatView& x, float cap) {
  require_f32(x, "softcap");
  if (x.rows == 0 || x.cols == 0) return;
  softcap_kernel<<<row_grid(x.rows, x.cols), kThreads, 0, stream_>>>(static_cast<float*>(x.data), x.row_stride,
                                                                     x.rows, x.cols, cap);
  HEADINFER_CUDA_CHECK_LAUNCH();
}

void CudaOps::add(const MatView& x, const MatView& y) {
  require_f32(x, "add");
  if (x.rows == 0 || x.cols == 0) return;
  launch_pdl(add_kernel, row_grid(x.rows, x.cols), kThreads, 0, stream_, static_cast<float*>(x.data), x.row_stride,
             static_cast<const float*>(y.data), y.row_stride, x.rows, x.cols);
  HEADINFER_CUDA_CHECK_LAUNCH();
}

void CudaOps::copy(const MatView& src, const MatView& dst) {
  if (src.rows != dst.rows || src.cols != dst.cols) throw Error("cuda backend: copy shape mismatch");
  if (src.rows == 0 || src.cols == 0) return;
  dispatch_dtype(src.dtype, [&](auto stag) {
    dispatch_dtype(dst.dtype, [&](auto dtag) {
      using S = typename decltype(stag)::type;
      using D = typename decltype(dtag)::type;
      launch_pdl(copy_kernel<S, D>, row_grid(src.rows, src.cols), kThreads, 0, stream_, static_cast<const S*>(src.data),
                 src.row_stride, static_cast<D*>(dst.data), dst.row_stride, src.rows, src.cols);
    });
  });
  HEADINFER_CUDA_CHECK_LAUNCH();
}

}  // namespace headinfer::cuda

namespace headinfer::cuda {

void CudaOps::copy_heads(const MatView& src, int64_t n_heads, const MatView& dst, int64_t dst_head_stride) {
  copy_heads_kv(src, MatView{}, n_heads, dst, MatView{}, dst_head_stride);
}

// copy_heads of k, and of v where v_src.data is set: one launch where the two pairs of views differ
// in their pointers only, two otherwise.
void CudaOps::copy_heads_kv(const MatView& k_src, const MatView& v_src, int64_t n_heads, const MatView& k_dst,
                            const MatView& v_dst, int64_t dst_head_stride) {
  const MatView &src = k_src, &dst = k_dst;
  if (src.rows != dst.rows || src.cols != n_heads * dst.cols) throw Error("cuda backend: copy_heads shape mismatch");
  const bool with_v = v_src.data != nullptr;
  const bool same_shape = v_src.dtype == src.dtype && v_src.rows == src.rows && v_src.cols == src.cols &&
                          v_src.row_stride == src.row_stride && v_dst.dtype == dst.dtype && v_dst.rows == dst.rows &&
                          v_dst.cols == dst.cols && v_dst.row_stride == dst.row_stride;
  if (with_v && !same_shape) {
    copy_heads_kv(k_src, MatView{}, n_heads, k_dst, MatView{}, dst_head_stride);
    copy_heads_kv(v_src, MatView{}, n_heads, v_dst, MatView{}, dst_head_stride);
    return;
  }
  if (src.rows == 0 || dst.cols == 0 || n_heads == 0) return;
  const int64_t blocks_z = with_v ? 2 * n_heads : n_heads;
  if (blocks_z > 65535) throw Error("cuda backend: copy_heads of more than 65535 heads");
  dispatch_dtype(src.dtype, [&](auto stag) {
    dispatch_dtype(dst.dtype, [&](auto dtag) {
      using S = typename decltype(stag)::type;
      using D = typename decltype(dtag)::type;
      const bool vec4 = dst_head_stride % 4 == 0 && vec4_ok(src.data, src.row_stride, dst.cols, sizeof(S)) &&
                        vec4_ok(dst.data, dst.row_stride, dst.cols, sizeof(D)) &&
                        (!with_v || (vec4_ok(v_src.data, v_src.row_stride, dst.cols, sizeof(S)) &&
                                     vec4_ok(v_dst.data, v_dst.row_stride, dst.cols, sizeof(D))));
      const int per = src.rows > 1 ? 4 : 1;
      const int64_t units = (dst.cols + per - 1) / per;
      const int64_t bx = per == 1 ? kThreads : std::min<int64_t>(kThreads, (units + 31) / 32 * 32);
      const int64_t by = std::max<int64_t>(1, std::min<int64_t>(kThreads / bx, src.rows));
      const dim3 block(static_cast<unsigned>(bx), static_cast<unsigned>(by));
      const dim3 grid(static_cast<unsigned>((units + bx - 1) / bx),
                      static_cast<unsigned>(std::min<int64_t>((src.rows + by - 1) / by, 65535)),
                      static_cast<unsigned>(blocks_z));
      const auto* s = static_cast<const S*>(src.data);
      auto* d = static_cast<D*>(dst.data);
      launch_pdl(per == 1 ? copy_heads_kernel<S, D, 1> : copy_heads_kernel<S, D, 4>, grid, block, 0, stream_, s, with_v ? static_cast<const S*>(v_src.data) : s,
                 src.row_stride, d, with_v ? static_cast<D*>(v_dst.data) : d, dst.row_stride, src.rows, dst.cols,
                 dst_head_stride, static_cast<unsigned>(n_heads), vec4);
    });
  });
  HEADINFER_CUDA_CHECK_LAUNCH();
}

}  // namespace headinfer::cuda
