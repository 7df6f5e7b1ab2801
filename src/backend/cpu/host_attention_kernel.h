#pragma once
// The host attention kernel, written once against a small SIMD wrapper V and instantiated by each
// ISA translation unit (host_attention_{scalar,avx2,avx512}.cpp) with its own V. Included only by
// those units; everything here has internal linkage (see host_attention_job.h for why).
//
// V provides: type R (a register of W floats); kAcc, the accumulator registers one block keeps
// live (16 on AVX-512's 32 registers, 8 on AVX2's 16); zero, set1, load, store (unaligned), add,
// mul, max, fma(a, b, c) = a * b + c, hsum and hmax (fixed trees), hsums (kAcc registers to kAcc
// sums in one transposing tree), exp (exp_poly below, lane-wise, 0 below kExpLo), load_f16 (W
// stored halves to fp32) and load2_bf16 (2W stored bf16 to two registers; kBf16EvenOdd says
// whether as even and odd elements, see Kv).
//
// Decode reads every K and V row once from DRAM, so the work per row must be a few dozen vector
// ops, not a few hundred. Per split of one kv head's keys, tile by tile (kTileKeys keys), for each
// query:
//  - scores for a block of NK keys x NH query heads (NK * NH = kAcc accumulators): each K chunk is
//    widened in registers once, straight from the stored rows, and used by every head of the
//    block; the kAcc dot products are reduced together (hsums), so no key pays a horizontal
//    reduction of its own;
//  - the online softmax on the tile's row of scores per head, W keys per vector op: new running
//    max m, p = exp(s - m) (exponents <= 0, nothing overflows), the tile's sum of p;
//  - acc_tile = sum p_j v_j for a block of NH heads x NC registers, each V chunk widened once for
//    all heads, then state = state * exp(m_old - m_new) + acc_tile (one fused step per tile).
// Sums inside a tile start from zero and are added to the running state once per tile, which is
// the summation depth the test derives its tolerance from.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "host_attention_job.h"

namespace headinfer::cpu::host_kernel {
namespace {

constexpr float kNegInf = -__builtin_inff();

// Cephes expf: 2^n * P(r) with r = x - n ln2 (ln2 split in two for an exact product), max
// relative error about 2 ulp. Inputs clamped to [-87.3, 88.3] so 2^n stays a normal float; here
// x <= 0 always and exp(-87.3) = 1.2e-38 is below any term that could matter next to the 1 of the
// maximum, so the vector paths return 0 below kExpLo (masked keys carry s = -inf).
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

// One stored element type as the kernel reads it: T in memory, 2W of them (a chunk) to two
// registers. kPermuted: the registers hold the chunk's even then odd elements rather than its
// halves, because that is what widens bf16 cheapest (one load, one shift, one and per 2W; the
// zero-extending load takes a shuffle and a shift per W, on the ports the FMAs need). q is
// permuted the same way, so dot products are unchanged, and the accumulators are put back in
// order once per split.
template <class V, KvElem E>
struct Kv;
template <class V>
struct Kv<V, KvElem::F32> {
  using T = float;
  static constexpr bool kPermuted = false;
  static void load2(const T* p, typename V::R& a, typename V::R& b) {
    a = V::load(p);
    b = V::load(p + V::W);
  }
};
template <class V>
struct Kv<V, KvElem::BF16> {
  using T = uint16_t;
  static constexpr bool kPermuted = V::kBf16EvenOdd;
  static void load2(const T* p, typename V::R& a, typename V::R& b) { V::load2_bf16(p, a, b); }
};
template <class V>
struct Kv<V, KvElem::F16> {
  using T = uint16_t;
  static constexpr bool kPermuted = false;
  static void load2(const T* p, typename V::R& a, typename V::R& b) {
    a = V::load_f16(p);
    b = V::load_f16(p + V::W);
  }
};

// x[0, dp) from natural order to [even | odd] per chunk of 2W (forward) or back.
template <int64_t W>
void permute_even_odd(float* x, int64_t dp, bool forward, float* tmp) {
  for (int64_t c0 = 0; c0 < dp; c0 += 2 * W) {
    for (int64_t i = 0; i < 2 * W; ++i) tmp[i] = x[c0 + i];
    for (int64_t i = 0; i < W; ++i) {
      if (forward) {
        x[c0 + i] = tmp[2 * i];
        x[c0 + W + i] = tmp[2 * i + 1];
      } else {
        x[c0 + 2 * i] = tmp[i];
        x[c0 + 2 * i + 1] = tmp[W + i];
      }
    }
  }
}

// Rows [row0, row0 + n) of K or V into `dst` [n][dp] fp32, columns [d, dp) zero: the path for head
// dims that are not whole registers, so the tile loops still run over whole registers.
template <class V>
void widen_rows(const Head& hd, const void* base, int64_t row0, int64_t n, int64_t dp, float* dst) {
  const int64_t d = hd.head_dim;
  for (int64_t r = 0; r < n; ++r) {
    float* out = dst + r * dp;
    const int64_t row = (row0 + r) * hd.kv_row_stride;
    const uint16_t* half = static_cast<const uint16_t*>(base) + row;
    for (int64_t i = 0; i < d; ++i) {
      switch (hd.elem) {
        case KvElem::F32: out[i] = static_cast<const float*>(base)[row + i]; break;
        case KvElem::BF16: out[i] = bf16_bits_to_f32(half[i]); break;
        case KvElem::F16: out[i] = f16_bits_to_f32(half[i]); break;
      }
    }
    for (int64_t i = d; i < dp; ++i) out[i] = 0.0f;
  }
}

// One tile of keys for one query: kDim is the padded head dim as a compile-time constant (64, 128)
// or 0 to read it at run time; E the element type K and V are read in; NH the query heads per
// block (1, 2 or 4, from the GQA group), which fixes NK = kAcc / NH keys per score block.
template <class V, int64_t kDim, KvElem E, int NH>
struct Tile {
  using R = typename V::R;
  using T = typename Kv<V, E>::T;
  static constexpr int64_t W = V::W;
  static constexpr int NK = V::kAcc / NH;
  // V registers (W floats each, taken in chunks of two) per accumulation block: as many as the
  // accumulators allow, capped by the head dim when it is known.
  static constexpr int64_t kRegsMax = V::kAcc / NH;
  static constexpr int64_t kRegsCap = kDim != 0 ? kDim / W : 4;
  static constexpr int64_t NC = kRegsCap < kRegsMax ? kRegsCap : kRegsMax;
  static_assert(NC % 2 == 0, "accumulation blocks are whole chunks of 2W");

  // Raw dot products q_h . k_j for keys [ja, jb) of the tile into sc[h * kTileKeys + j]. q: the
  // query's heads [nqh][dp]; k: the tile's first row, rows ld elements apart.
  static void scores(const float* q, int64_t nqh, const T* k, int64_t ld, int64_t ja, int64_t jb, int64_t dp_runtime,
                     float* sc) {
    const int64_t dp = kDim != 0 ? kDim : dp_runtime;
    for (int64_t h0 = 0; h0 < nqh; h0 += NH) {
      int64_t j0 = ja;
      if (h0 + NH <= nqh)
        for (; j0 + NK <= jb; j0 += NK) score_block<true>(q, nqh, h0, k, ld, j0, jb, dp, sc);
      for (; j0 < jb; j0 += NK) score_block<false>(q, nqh, h0, k, ld, j0, jb, dp, sc);
    }
  }

  // One block of NK keys from j0 x NH heads from h0. A partial block (kFull false) repeats the
  // last head or key (valid memory) past nqh or jb and drops those sums.
  template <bool kFull>
  static void score_block(const float* q, int64_t nqh, int64_t h0, const T* k, int64_t ld, int64_t j0, int64_t jb,
                          int64_t dp_runtime, float* sc) {
    const int64_t dp = kDim != 0 ? kDim : dp_runtime;
    const float* qh[NH];
    for (int h = 0; h < NH; ++h) qh[h] = q + (kFull || h0 + h < nqh ? h0 + h : nqh - 1) * dp;
    const T* kj[NK];
    for (int i = 0; i < NK; ++i) kj[i] = k + (kFull || j0 + i < jb ? j0 + i : jb - 1) * ld;
    R acc[NH * NK];  // [head][key], so each head's NK sums land side by side
    for (int i = 0; i < NH * NK; ++i) acc[i] = V::zero();
    for (int64_t c = 0; c < dp; c += 2 * W) {
      for (int i = 0; i < NK; ++i) {
        R ka, kb;
        Kv<V, E>::load2(kj[i] + c, ka, kb);
        for (int h = 0; h < NH; ++h) {
          acc[h * NK + i] = V::fma(V::load(qh[h] + c), ka, acc[h * NK + i]);
          acc[h * NK + i] = V::fma(V::load(qh[h] + c + W), kb, acc[h * NK + i]);
        }
      }
    }
    alignas(64) float dots[NH * NK];
    V::hsums(acc, dots);
    if constexpr (kFull) {
      for (int h = 0; h < NH; ++h) __builtin_memcpy(sc + (h0 + h) * kTileKeys + j0, dots + h * NK, NK * sizeof(float));
    } else {
      for (int h = 0; h < NH && h0 + h < nqh; ++h)
        for (int i = 0; i < NK && j0 + i < jb; ++i) sc[(h0 + h) * kTileKeys + j0 + i] = dots[h * NK + i];
    }
  }

  // acc_tile = sum over keys [ja, jb) of p_hj * v_j, then st_h = st_h * alpha_h + acc_tile for
  // every head h. p: sc as softmax left it; st: the query's states, sf floats apart.
  template <int64_t kNC>
  static void accumulate_block(const float* p, int64_t nqh, int64_t h0, const T* v, int64_t ld, int64_t ja,
                               int64_t jb, int64_t c0, const float* alpha, float* st, int64_t sf) {
    const float* ph[NH];
    for (int h = 0; h < NH; ++h) ph[h] = p + (h0 + h < nqh ? h0 + h : nqh - 1) * kTileKeys;
    R acc[NH * kNC];
    for (int i = 0; i < NH * kNC; ++i) acc[i] = V::zero();
    for (int64_t j = ja; j < jb; ++j) {
      R vv[kNC];
      for (int c = 0; c < kNC; c += 2) Kv<V, E>::load2(v + j * ld + c0 + c * W, vv[c], vv[c + 1]);
      for (int h = 0; h < NH; ++h) {
        const R pv = V::set1(ph[h][j]);
        for (int c = 0; c < kNC; ++c) acc[h * kNC + c] = V::fma(pv, vv[c], acc[h * kNC + c]);
      }
    }
    for (int h = 0; h < NH && h0 + h < nqh; ++h) {
      float* s = st + (h0 + h) * sf + c0;
      const R a = V::set1(alpha[h0 + h]);
      for (int c = 0; c < kNC; ++c) V::store(s + c * W, V::fma(V::load(s + c * W), a, acc[h * kNC + c]));
    }
  }

  static void accumulate(const float* p, int64_t nqh, const T* v, int64_t ld, int64_t ja, int64_t jb, int64_t dp,
                         const float* alpha, float* st, int64_t sf) {
    const int64_t dim = kDim != 0 ? kDim : dp;
    for (int64_t h0 = 0; h0 < nqh; h0 += NH) {
      int64_t c0 = 0;
      for (; c0 + NC * W <= dim; c0 += NC * W) accumulate_block<NC>(p, nqh, h0, v, ld, ja, jb, c0, alpha, st, sf);
      if constexpr (kDim == 0 || kDim % (NC * W) != 0)
        for (; c0 < dim; c0 += 2 * W) accumulate_block<2>(p, nqh, h0, v, ld, ja, jb, c0, alpha, st, sf);
    }
  }

  // The online softmax of one query's heads over the tile: sc holds raw dots for [ja, jb);
  // leaves p_hj there (0 outside [ja, jb)), alpha_h = exp(m_old - m_new), and updates m and l.
  static void softmax(float* sc, int64_t nqh, int64_t ja, int64_t jb, float scale, float softcap, float* alpha,
                      float* st, int64_t sf, int64_t dp) {
    const R scale_vec = V::set1(scale);
    for (int64_t h = 0; h < nqh; ++h) {
      float* s = sc + h * kTileKeys;
      for (int64_t j = 0; j < ja; ++j) s[j] = kNegInf;
      for (int64_t j = jb; j < kTileKeys; ++j) s[j] = kNegInf;
      R mx = V::set1(kNegInf);
      for (int64_t j = 0; j < kTileKeys; j += W) {
        const R x = V::mul(V::load(s + j), scale_vec);
        V::store(s + j, x);
        mx = V::max(mx, x);
      }
      float* m = st + h * sf + dp;
      float m_tile = V::hmax(mx);
      if (softcap > 0.0f) {  // gemma2: scalar tanh, as the reference op computes it
        m_tile = kNegInf;
        for (int64_t j = ja; j < jb; ++j) {
          s[j] = std::tanh(s[j] / softcap) * softcap;
          m_tile = s[j] > m_tile ? s[j] : m_tile;
        }
      }
      const float m_new = *m > m_tile ? *m : m_tile;
      alpha[h] = *m == kNegInf ? 0.0f : exp_poly_scalar(*m - m_new);
      const R m_vec = V::set1(m_new);
      R sum = V::zero();
      for (int64_t j = 0; j < kTileKeys; j += W) {
        const R pj = V::exp(V::sub(V::load(s + j), m_vec));
        V::store(s + j, pj);
        sum = V::add(sum, pj);
      }
      m[0] = m_new;
      m[1] = m[1] * alpha[h] + V::hsum(sum);
    }
  }

  static void run(const Head& hd, const T* k, const T* v, int64_t ld, int64_t t0, int64_t n, const Scratch& s,
                  float* states) {
    const int64_t dp = kDim != 0 ? kDim : padded_dim(hd.head_dim);
    const int64_t nqh = hd.n_q_heads, sf = dp + 2;
    for (int64_t t = 0; t < hd.n_queries; ++t) {
      // Keys visible to query t: one run [lo, hi) (causal, and the window when there is one).
      const int64_t q_pos = hd.q_pos0 + t;
      const int64_t hi = q_pos - hd.k_pos0 + 1;
      const int64_t lo = hd.window > 0 ? q_pos - hd.window + 1 - hd.k_pos0 : t0;
      const int64_t a = lo > t0 ? lo : t0;
      const int64_t b = hi < t0 + n ? hi : t0 + n;
      if (a >= b) continue;
      float* st = states + t * nqh * sf;
      scores(s.q + t * nqh * dp, nqh, k, ld, a - t0, b - t0, dp, s.scores);
      softmax(s.scores, nqh, a - t0, b - t0, hd.scale, hd.softcap, s.alpha, st, sf, dp);
      accumulate(s.scores, nqh, v, ld, a - t0, b - t0, dp, s.alpha, st, sf);
    }
  }
};

// Software prefetch of K and V rows a few tiles ahead. The hardware streamer stops at each 4 KiB
// page and restarts on the next; one thread reading two streams while it computes then leaves
// DRAM idle at every page turn (measured: F32 decode on one core, 6.6 -> 7.9 GB/s).
constexpr int64_t kPrefetchTiles = 2;

template <class T>
void prefetch_rows(const T* k, const T* v, int64_t r0, int64_t r1, int64_t ld, int64_t d) {
  const int64_t bytes = d * static_cast<int64_t>(sizeof(T));
  for (int64_t r = r0; r < r1; ++r) {
    const char* kr = reinterpret_cast<const char*>(k + r * ld);
    const char* vr = reinterpret_cast<const char*>(v + r * ld);
    for (int64_t o = 0; o < bytes; o += 64) {
      __builtin_prefetch(kr + o, 0, 3);
      __builtin_prefetch(vr + o, 0, 3);
    }
  }
}

template <class V, int64_t kDim>
struct Split {
  template <KvElem E, int NH>
  static void tiles(const Head& hd, int64_t key_begin, int64_t key_end, const Scratch& s, float* states) {
    using T = typename Kv<V, E>::T;
    const int64_t dp = kDim != 0 ? kDim : padded_dim(hd.head_dim);
    for (int64_t t0 = key_begin; t0 < key_end; t0 += kTileKeys) {
      const int64_t n = key_end - t0 < kTileKeys ? key_end - t0 : kTileKeys;
      if constexpr (E == KvElem::F32) {
        if (hd.head_dim != dp) {
          widen_rows<V>(hd, hd.k, t0, n, dp, s.k_tile);
          widen_rows<V>(hd, hd.v, t0, n, dp, s.v_tile);
          Tile<V, kDim, E, NH>::run(hd, s.k_tile, s.v_tile, dp, t0, n, s, states);
          continue;
        }
      }
      const int64_t ld = hd.kv_row_stride;
      if (t0 + kPrefetchTiles * kTileKeys < key_end) {
        const int64_t r0 = t0 + kPrefetchTiles * kTileKeys;
        const int64_t r1 = r0 + kTileKeys < key_end ? r0 + kTileKeys : key_end;
        prefetch_rows(static_cast<const T*>(hd.k), static_cast<const T*>(hd.v), r0, r1, ld, hd.head_dim);
      }
      Tile<V, kDim, E, NH>::run(hd, static_cast<const T*>(hd.k) + t0 * ld, static_cast<const T*>(hd.v) + t0 * ld, ld,
                                t0, n, s, states);
    }
  }

  template <KvElem E>
  static void by_group(const Head& hd, int64_t key_begin, int64_t key_end, const Scratch& s, float* states) {
    const int64_t dp = kDim != 0 ? kDim : padded_dim(hd.head_dim), sf = dp + 2;
    const int64_t n_rows = hd.n_queries * hd.n_q_heads;
    float tmp[2 * V::W];
    if constexpr (Kv<V, E>::kPermuted)
      for (int64_t r = 0; r < n_rows; ++r) permute_even_odd<V::W>(s.q + r * dp, dp, true, tmp);
    switch (hd.n_q_heads) {
      case 1: tiles<E, 1>(hd, key_begin, key_end, s, states); break;
      case 2: tiles<E, 2>(hd, key_begin, key_end, s, states); break;
      default: tiles<E, 4>(hd, key_begin, key_end, s, states); break;
    }
    if constexpr (Kv<V, E>::kPermuted)
      for (int64_t r = 0; r < n_rows; ++r) permute_even_odd<V::W>(states + r * sf, dp, false, tmp);
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
    // Rows of a whole-register width are read in place in their stored type; others are widened
    // into the scratch per tile and read as F32.
    if (d != dp) return by_group<KvElem::F32>(hd, key_begin, key_end, s, states);
    switch (hd.elem) {
      case KvElem::F32: return by_group<KvElem::F32>(hd, key_begin, key_end, s, states);
      case KvElem::BF16: return by_group<KvElem::BF16>(hd, key_begin, key_end, s, states);
      case KvElem::F16: return by_group<KvElem::F16>(hd, key_begin, key_end, s, states);
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
