#include "cpu_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <vector>

#include "headinfer/error.h"

namespace headinfer::cpu {
namespace {

// Widens `n` elements starting at element `offset` of a parameter into fp32.
void widen(const void* base, DType t, int64_t offset, int64_t n, float* dst) {
  const char* p = static_cast<const char*>(base) + offset * static_cast<int64_t>(dtype_size(t));
  convert_to_f32(t, p, dst, static_cast<size_t>(n));
}

void require_f32(const MatView& m, const char* op) {
  if (m.dtype != DType::F32) throw Error(std::string("cpu backend: ") + op + " needs F32 activations");
}

// Scratch that grows to the largest size seen and is then reused (one per thread).
float* scratch(std::vector<float>& buf, int64_t n) {
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

}  // namespace

// The CPU device's memory is the host's: the id is read where it lies.
void CpuOps::embedding_device_id(const int32_t* device_id, const WeightView& table, const MatView& out) {
  embedding(std::span<const int32_t>(device_id, 1), table, out);
}

void CpuOps::embedding(std::span<const int32_t> ids, const WeightView& table, const MatView& out) {
  require_f32(out, "embedding");
  for (int32_t id : ids)
    if (id < 0 || id >= table.out_features)
      throw Error("token id " + std::to_string(id) + " is outside the vocabulary (" +
                  std::to_string(table.out_features) + " tokens)");
  pool_.parallel_for(static_cast<int64_t>(ids.size()), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t)
      widen(table.data, table.dtype, ids[static_cast<size_t>(t)] * table.in_features, table.in_features,
            out.row<float>(t));
  });
}

void CpuOps::rms_norm(const MatView& x, const VecView& weight, float eps, const MatView& out) {
  require_f32(x, "rms_norm");
  require_f32(out, "rms_norm");
  pool_.parallel_for(x.rows, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> wbuf;
    float* w = scratch(wbuf, x.cols);
    widen(weight.data, weight.dtype, 0, x.cols, w);
    for (int64_t r = b; r < e; ++r) {
      const float* xr = x.row<float>(r);
      float* o = out.row<float>(r);
      const float mean_sq = dot_f32(xr, xr, x.cols) / static_cast<float>(x.cols);
      const float inv = 1.0f / std::sqrt(mean_sq + eps);
      for (int64_t i = 0; i < x.cols; ++i) o[i] = w[i] * (xr[i] * inv);
    }
  });
}

void CpuOps::linear(const MatView& x, const WeightView& w, const VecView* bias, const MatView& y) {
  require_f32(x, "linear");
  if (x.cols != w.in_features || y.cols != w.out_features || x.rows != y.rows)
    throw Error("cpu backend: linear shape mismatch");
  constexpr int64_t kBlock = 16;  // output features widened at once
  const int64_t n_blocks = (w.out_features + kBlock - 1) / kBlock;
  const int64_t in = w.in_features;
  pool_.parallel_for(n_blocks, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> wbuf;
    thread_local std::vector<float> bbuf;
    float* wf = scratch(wbuf, kBlock * in);
    float* bf = scratch(bbuf, kBlock);
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t j0 = blk * kBlock;
      const int64_t nj = std::min(kBlock, w.out_features - j0);
      widen(w.data, w.dtype, j0 * in, nj * in, wf);
      if (bias != nullptr) widen(bias->data, bias->dtype, j0, nj, bf);
      for (int64_t t = 0; t < x.rows; ++t) {
        const float* xr = x.row<float>(t);
        float* yr = y.row<float>(t) + j0;
        for (int64_t j = 0; j < nj; ++j) {
          float v = dot_f32(xr, wf + j * in, in);
          yr[j] = bias != nullptr ? v + bf[j] : v;
        }
      }
    }
  });
}

void CpuOps::rope(const MatView& x, int64_t n_heads, const RopeTable& rope, int64_t pos0) {
  require_f32(x, "rope");
  const int64_t half = rope.rotary() / 2;  // dims past rotary() are left as they are
  pool_.parallel_for(x.rows, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> cbuf;
    float* cs = scratch(cbuf, 2 * half);
    for (int64_t t = b; t < e; ++t) {
      const float pos = static_cast<float>(pos0 + t);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = rope.inv_freq[i] * pos;  // fp32 product, as transformers
        cs[i] = std::cos(angle) * rope.attention_factor;
        cs[half + i] = std::sin(angle) * rope.attention_factor;
      }
      float* row = x.row<float>(t);
      for (int64_t h = 0; h < n_heads; ++h) {
        float* v = row + h * rope.head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = v[i], x2 = v[half + i];
          v[i] = x1 * cs[i] - x2 * cs[half + i];
          v[half + i] = x2 * cs[i] + x1 * cs[half + i];
        }
      }
    }
  });
}

void CpuOps::attention(const AttentionArgs& a) {
  if (a.out16.data != nullptr) throw Error("cpu backend: attention writes F32 outputs only (attention_out16)");
  for (int64_t i = 0; i < a.n_kv_heads; ++i) attention_one_head(a.head(i));
}

void CpuOps::attention_one_head(const AttentionArgs& a) {
  require_f32(a.q, "attention");
  const int64_t d = a.head_dim;
  // A BF16/F16 store (hybrid tests, other devices' KV) is widened row by row into fp32 scratch, so
  // every sum runs in the same order as over an F32 store holding the same values.
  const bool widened = a.kv.dtype != DType::F32;
  const auto kv_row_bytes = a.kv.row_stride * static_cast<int64_t>(dtype_size(a.kv.dtype));
  const int64_t n_tasks = a.q.rows * a.n_q_heads;
  pool_.parallel_for(n_tasks, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> sbuf, kbuf;
    float* scores = scratch(sbuf, std::max<int64_t>(a.n_keys, 1));
    float* wide = widened ? scratch(kbuf, d) : nullptr;  // F32 [head_dim]: one widened K or V row
    auto kv_row = [&](const void* base, int64_t j) -> const float* {
      const char* p = static_cast<const char*>(base) + j * kv_row_bytes;
      if (!widened) return reinterpret_cast<const float*>(p);
      convert_to_f32(a.kv.dtype, p, wide, static_cast<size_t>(d));
      return wide;
    };
    for (int64_t task = b; task < e; ++task) {
      const int64_t t = task / a.n_q_heads, h = task % a.n_q_heads;
      const float* q = a.q.row<float>(t) + h * d;
      float* out = a.out.row<float>(t) + h * d;
      float* lse = a.lse.row<float>(t) + h;
      const int64_t q_pos = a.q_pos0 + t;
      // Visible keys form one contiguous run [j0, j1) of this part.
      int64_t j1 = std::min(a.n_keys, q_pos - a.k_pos0 + 1);
      int64_t j0 = a.window > 0 ? std::max<int64_t>(0, q_pos - a.window + 1 - a.k_pos0) : 0;
      if (j1 <= j0) {
        std::fill(out, out + d, 0.0f);
        *lse = -std::numeric_limits<float>::infinity();
        continue;
      }
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t j = j0; j < j1; ++j) {
        scores[j] = dot_f32(q, kv_row(a.kv.k, j), d) * a.scale;
        if (a.softcap > 0.0f) scores[j] = std::tanh(scores[j] / a.softcap) * a.softcap;
        m = std::max(m, scores[j]);
      }
      float sum = 0.0f;
      for (int64_t j = j0; j < j1; ++j) {
        scores[j] = std::exp(scores[j] - m);
        sum += scores[j];
      }
      std::fill(out, out + d, 0.0f);
      for (int64_t j = j0; j < j1; ++j) {
        const float p = scores[j];
        const float* v = kv_row(a.kv.v, j);
        for (int64_t i = 0; i < d; ++i) out[i] += p * v[i];
      }
      const float inv = 1.0f / sum;
      for (int64_t i = 0; i < d; ++i) out[i] *= inv;
      *lse = m + std::log(sum);
    }
  });
}

void CpuOps::attention_merge(const MatView& out_a, const MatView& lse_a, const MatView& out_b, const MatView& lse_b,
                             int64_t head_dim) {
  const int64_t n_heads = lse_a.cols;
  pool_.parallel_for(out_a.rows * n_heads, [&](int64_t b, int64_t e) {
    for (int64_t task = b; task < e; ++task) {
      const int64_t t = task / n_heads, h = task % n_heads;
      float& la = lse_a.row<float>(t)[h];
      const float lb = lse_b.row<float>(t)[h];
      float* oa = out_a.row<float>(t) + h * head_dim;
      const float* ob = out_b.row<float>(t) + h * head_dim;
      if (std::isinf(lb) && lb < 0) continue;
      if (std::isinf(la) && la < 0) {
        std::copy(ob, ob + head_dim, oa);
        la = lb;
        continue;
      }
      const float m = std::max(la, lb);
      const float wa = std::exp(la - m), wb = std::exp(lb - m);
      const float inv = 1.0f / (wa + wb);
      for (int64_t i = 0; i < head_dim; ++i) oa[i] = (wa * oa[i] + wb * ob[i]) * inv;
      la = m + std::log(wa + wb);
    }
  });
}

void CpuOps::silu_mul(const MatView& gate, const MatView& up, const MatView& out) {
  require_f32(out, "silu_mul");
  pool_.parallel_for(gate.rows, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* g = gate.row<float>(t);
      const float* u = up.row<float>(t);
      float* o = out.row<float>(t);
      for (int64_t i = 0; i < gate.cols; ++i) o[i] = g[i] * (1.0f / (1.0f + std::exp(-g[i]))) * u[i];  // silu(g) = g * sigmoid(g)
    }
  });
}

static float gelu_tanh(float x) {
  // torch's gelu(approximate='tanh'): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in fp32.
  const float beta = static_cast<float>(std::numbers::sqrt2 * std::numbers::inv_sqrtpi), kappa = 0.044715f;
  const float inner = beta * (x + kappa * (x * x * x));
  return 0.5f * x * (1.0f + std::tanh(inner));
}

void CpuOps::gelu_tanh_mul(const MatView& gate, const MatView& up, const MatView& out) {
  require_f32(out, "gelu_tanh_mul");
  pool_.parallel_for(gate.rows, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* g = gate.row<float>(t);
      const float* u = up.row<float>(t);
      float* o = out.row<float>(t);
      for (int64_t i = 0; i < gate.cols; ++i) o[i] = gelu_tanh(g[i]) * u[i];
    }
  });
}

void CpuOps::scale(const MatView& x, float s) {
  require_f32(x, "scale");
  pool_.parallel_for(x.rows, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      float* xr = x.row<float>(t);
      for (int64_t i = 0; i < x.cols; ++i) xr[i] *= s;
    }
  });
}

void CpuOps::softcap(const MatView& x, float cap) {
  require_f32(x, "softcap");
  pool_.parallel_for(x.rows, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      float* xr = x.row<float>(t);
      for (int64_t i = 0; i < x.cols; ++i) xr[i] = std::tanh(xr[i] / cap) * cap;
    }
  });
}

void CpuOps::add(const MatView& x, const MatView& y) {
  pool_.parallel_for(x.rows, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      float* xr = x.row<float>(t);
      const float* yr = y.row<float>(t);
      for (int64_t i = 0; i < x.cols; ++i) xr[i] += yr[i];
    }
  });
}

void CpuOps::argmax(const MatView& x, int32_t* out) {
  require_f32(x, "argmax");
  if (x.rows != 1 || x.cols < 1) throw Error("argmax needs one row");
  const float* v = x.row<float>(0);
  int64_t best = 0;  // the sampler's rule: the first largest; NaNs never win
  for (int64_t i = 1; i < x.cols; ++i)
    if (v[i] > v[best]) best = i;
  *out = static_cast<int32_t>(best);
}

void CpuOps::copy(const MatView& src, const MatView& dst) {
  if (src.rows != dst.rows || src.cols != dst.cols) throw Error("cpu backend: copy shape mismatch");
  const auto src_row_bytes = src.row_stride * static_cast<int64_t>(dtype_size(src.dtype));
  if (dst.dtype == DType::F32) {
    for (int64_t t = 0; t < src.rows; ++t)
      widen(src.row<char>(0) + t * src_row_bytes, src.dtype, 0, src.cols, dst.row<float>(t));
    return;
  }
  if (src.dtype == dst.dtype) {  // a 16-bit KV block's rows moving (a window block sliding)
    const auto elem = static_cast<int64_t>(dtype_size(src.dtype));
    for (int64_t t = 0; t < src.rows; ++t)
      std::memmove(static_cast<char*>(dst.data) + t * dst.row_stride * elem,
                   static_cast<const char*>(src.data) + t * src_row_bytes, static_cast<size_t>(src.cols * elem));
    return;
  }
  // Narrowing (F32 activations into a BF16/F16 KV store) rounds to nearest even, as torch does.
  require_f32(src, "copy to BF16/F16");
  for (int64_t t = 0; t < src.rows; ++t) {
    const float* s = src.row<float>(t);
    auto* o = dst.row<uint16_t>(t);
    for (int64_t i = 0; i < src.cols; ++i) o[i] = dst.dtype == DType::BF16 ? f32_to_bf16(s[i]) : f32_to_f16(s[i]);
  }
}

}  // namespace headinfer::cpu
