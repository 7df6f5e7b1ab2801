#pragma once
// The host attention kernel, written once against a small SIMD wrapper V and instantiated by each
// ISA translation unit (host_attention_{scalar,avx2,avx512}.cpp) with its own V. Included only by
// those units; everything here has internal linkage (see host_attention_job.h for why).
//
// V provides: type R (a register of W floats); zero, set1, load, store (unaligned), add, sub, mul,
// fma(a, b, c) = a * b + c, hsum (fixed reduction tree), exp (exp_poly below, lane-wise), and
// widen_bf16 / widen_f16 (W elements to fp32).
//
// Per split of one kv head's keys, tile by tile: widen the tile's K and V rows to fp32 once, then
// for every query and query head that sees part of the tile, the online softmax: scores of the
// visible keys, new running max m, rescale of the running sum l and accumulator by exp(m_old -
// m_new), then l += sum p and acc += sum p * v. Exponents are always <= 0, so nothing overflows.
#include <cstddef>
#include <cstdint>

#include "host_attention_job.h"

namespace headinfer::cpu::host_kernel {
namespace {

constexpr float kNegInf = -__builtin_inff();

// Cephes expf: 2^n * P(r) with r = x - n ln2 (ln2 split in two for an exact product), max
// relative error about 2 ulp. Inputs clamped to [-87.3, 88.3] so 2^n stays a normal float; here
// x <= 0 always and exp(-87.3) = 1.2e-38 is below any term that could matter next to the 1 of the
// maximum.
constexpr float kExpLo = -87.3f, kExpHi = 88.3f, kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

float exp_poly_scalar(float x) {
  x = x < kExpLo ? kExpLo : (x > kExpHi ? kExpHi : x);
  const float n = __builtin_floorf(x * kLog2e + 0.5f);
  x = x - n * kLn2Hi;
  x = x - n * kLn2Lo;
  float y = kP0;
  y = y * x + kP1;
  y = y * x + kP2;
  y = y * x + kP3;
  y = y * x + kP4;
  y = y * x + kP5;
  y = y * x * x + x + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, 4);
  return y * scale;
}

float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    float f = static_cast<float>(mant) * 5.9604644775390625e-8f;  // subnormal: mant * 2^-24, exact
    __builtin_memcpy(&bits, &f, 4);
    bits |= sign;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

float bf16_bits_to_f32(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

// Rows [row0, row0 + n) of K or V into `dst` [n][dp] fp32, columns [d, dp) zero.
template <class V>
void widen_rows(const Head& hd, const void* base, int64_t row0, int64_t n, int64_t dp, float* dst) {
  constexpr int64_t W = V::W;
  const int64_t d = hd.head_dim;
  for (int64_t r = 0; r < n; ++r) {
    float* out = dst + r * dp;
    const int64_t row = (row0 + r) * hd.kv_row_stride;
    int64_t i = 0;
    switch (hd.elem) {
      case KvElem::F32: {
        const float* src = static_cast<const float*>(base) + row;
        for (; i + W <= d; i += W) V::store(out + i, V::load(src + i));
        for (; i < d; ++i) out[i] = src[i];
        break;
      }
      case KvElem::BF16: {
        const uint16_t* src = static_cast<const uint16_t*>(base) + row;
        for (; i + W <= d; i += W) V::widen_bf16(src + i, out + i);
        for (; i < d; ++i) out[i] = bf16_bits_to_f32(src[i]);
        break;
      }
      case KvElem::F16: {
        const uint16_t* src = static_cast<const uint16_t*>(base) + row;
        for (; i + W <= d; i += W) V::widen_f16(src + i, out + i);
        for (; i < d; ++i) out[i] = f16_bits_to_f32(src[i]);
        break;
      }
    }
    for (; i < dp; ++i) out[i] = 0.0f;
  }
}

// kDim: the padded head dim as a compile-time constant (64, 128: the accumulator stays in
// registers), or 0 to read it from the head.
template <class V, int64_t kDim>
struct Split {
  using R = typename V::R;
  static constexpr int64_t W = V::W;

  // Tile rows [j0, j1) for one (query, query head): q [dp], state st [dp + 2] (acc, m, l); the
  // tile's K and V rows are `ld` floats apart (dp in the scratch, the store's stride when read
  // in place).
  static void attend_rows(const float* q, const float* k_tile, const float* v_tile, int64_t ld, int64_t j0,
                          int64_t j1, int64_t dp_runtime, float scale, float* scores, float* st) {
    const int64_t dp = kDim != 0 ? kDim : dp_runtime;
    const int64_t n = j1 - j0;
    const float* k = k_tile + j0 * ld;
    const float* v = v_tile + j0 * ld;
    // Scores, four keys at a time so four independent FMA chains are in flight.
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      R a0 = V::zero(), a1 = V::zero(), a2 = V::zero(), a3 = V::zero();
      for (int64_t c = 0; c < dp; c += W) {
        const R qv = V::load(q + c);
        a0 = V::fma(qv, V::load(k + (j + 0) * ld + c), a0);
        a1 = V::fma(qv, V::load(k + (j + 1) * ld + c), a1);
        a2 = V::fma(qv, V::load(k + (j + 2) * ld + c), a2);
        a3 = V::fma(qv, V::load(k + (j + 3) * ld + c), a3);
      }
      scores[j + 0] = V::hsum(a0) * scale;
      scores[j + 1] = V::hsum(a1) * scale;
      scores[j + 2] = V::hsum(a2) * scale;
      scores[j + 3] = V::hsum(a3) * scale;
    }
    for (; j < n; ++j) {
      R a = V::zero();
      for (int64_t c = 0; c < dp; c += W) a = V::fma(V::load(q + c), V::load(k + j * ld + c), a);
      scores[j] = V::hsum(a) * scale;
    }
    float m_tile = kNegInf;
    for (j = 0; j < n; ++j) m_tile = scores[j] > m_tile ? scores[j] : m_tile;
    const float m_old = st[dp];
    const float m_new = m_old > m_tile ? m_old : m_tile;
    const float alpha = m_old == kNegInf ? 0.0f : exp_poly_scalar(m_old - m_new);
    // p_j = exp(s_j - m_new) in place; the lanes past n (up to a whole register, inside the
    // kTileKeys buffer) are computed and ignored.
    const R m_vec = V::set1(m_new);
    for (j = 0; j < n; j += W) V::store(scores + j, V::exp(V::sub(V::load(scores + j), m_vec)));
    float sum = 0.0f;
    for (j = 0; j < n; ++j) sum += scores[j];
    st[dp + 1] = st[dp + 1] * alpha + sum;
    st[dp] = m_new;
    const R alpha_vec = V::set1(alpha);
    if constexpr (kDim != 0) {
      R acc[kDim / W];
      for (int64_t c = 0; c < kDim / W; ++c) acc[c] = V::mul(V::load(st + c * W), alpha_vec);
      for (j = 0; j < n; ++j) {
        const R p = V::set1(scores[j]);
        for (int64_t c = 0; c < kDim / W; ++c) acc[c] = V::fma(p, V::load(v + j * ld + c * W), acc[c]);
      }
      for (int64_t c = 0; c < kDim / W; ++c) V::store(st + c * W, acc[c]);
    } else {
      for (int64_t c = 0; c < dp; c += W) {
        R acc = V::mul(V::load(st + c), alpha_vec);
        for (j = 0; j < n; ++j) acc = V::fma(V::set1(scores[j]), V::load(v + j * ld + c), acc);
        V::store(st + c, acc);
      }
    }
  }

  static void run(const Head& hd, int64_t key_begin, int64_t key_end, const Scratch& s, float* states) {
    const int64_t dp = kDim != 0 ? kDim : padded_dim(hd.head_dim);
    const int64_t d = hd.head_dim, nqh = hd.n_q_heads, sf = dp + 2;
    const int64_t n_rows = hd.n_queries * nqh;
    for (int64_t r = 0; r < n_rows; ++r) {
      const float* src = hd.q + (r / nqh) * hd.q_row_stride + (r % nqh) * d;
      float* qr = s.q + r * dp;
      for (int64_t i = 0; i < d; ++i) qr[i] = src[i];
      for (int64_t i = d; i < dp; ++i) qr[i] = 0.0f;
      float* st = states + r * sf;
      for (int64_t i = 0; i < dp; ++i) st[i] = 0.0f;
      st[dp] = kNegInf;
      st[dp + 1] = 0.0f;
    }
    // F32 rows of a whole-register width are read in place; anything else is widened per tile.
    const bool in_place = hd.elem == KvElem::F32 && d == dp;
    const int64_t ld = in_place ? hd.kv_row_stride : dp;
    for (int64_t t0 = key_begin; t0 < key_end; t0 += kTileKeys) {
      const int64_t n = key_end - t0 < kTileKeys ? key_end - t0 : kTileKeys;
      const float* k_tile = s.k_tile;
      const float* v_tile = s.v_tile;
      if (in_place) {
        k_tile = static_cast<const float*>(hd.k) + t0 * ld;
        v_tile = static_cast<const float*>(hd.v) + t0 * ld;
      } else {
        widen_rows<V>(hd, hd.k, t0, n, dp, s.k_tile);
        widen_rows<V>(hd, hd.v, t0, n, dp, s.v_tile);
      }
      for (int64_t t = 0; t < hd.n_queries; ++t) {
        // Keys visible to query t: one run [lo, hi) (causal, and the window when there is one).
        const int64_t q_pos = hd.q_pos0 + t;
        const int64_t hi = q_pos - hd.k_pos0 + 1;
        const int64_t lo = hd.window > 0 ? q_pos - hd.window + 1 - hd.k_pos0 : t0;
        const int64_t a = lo > t0 ? lo : t0;
        const int64_t b = hi < t0 + n ? hi : t0 + n;
        if (a >= b) continue;
        for (int64_t h = 0; h < nqh; ++h) {
          const int64_t r = t * nqh + h;
          attend_rows(s.q + r * dp, k_tile, v_tile, ld, a - t0, b - t0, dp, hd.scale, s.scores, states + r * sf);
        }
      }
    }
  }
};

// The one place a head dim becomes a template constant.
template <class V>
void run_split(const Head& hd, int64_t key_begin, int64_t key_end, const Scratch& s, float* states) {
  switch (padded_dim(hd.head_dim)) {
    case 64: Split<V, 64>::run(hd, key_begin, key_end, s, states); break;
    case 128: Split<V, 128>::run(hd, key_begin, key_end, s, states); break;
    default: Split<V, 0>::run(hd, key_begin, key_end, s, states); break;
  }
}

}  // namespace
}  // namespace headinfer::cpu::host_kernel
