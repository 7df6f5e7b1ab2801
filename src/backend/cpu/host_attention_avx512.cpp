// The AVX-512 host attention path (compiled with -mavx512f; run only where __builtin_cpu_supports
// says so). V is 16 floats; a score block is 4 keys x 4 heads (or 8 x 2, 16 x 1): 16 accumulators
// of the 32 registers, the rest for the widened K chunks and q.
// GCC 12 reports its own _mm512_undefined_* placeholders inside the shuffle and convert
// intrinsics as uninitialized once they are inlined here (a false positive, like the
// maybe-uninitialized one the build already turns off for this file).
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <immintrin.h>

#include "host_attention_kernel.h"

namespace headinfer::cpu::host_kernel {
namespace {

struct Avx512 {
  using R = __m512;
  static constexpr int64_t W = 16;
  static constexpr int kAcc = 16;
  static R zero() { return _mm512_setzero_ps(); }
  static R set1(float x) { return _mm512_set1_ps(x); }
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, R x) { _mm512_storeu_ps(p, x); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R max(R a, R b) { return _mm512_max_ps(a, b); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static float hsum(R a) { return _mm512_reduce_add_ps(a); }
  static float hmax(R a) { return _mm512_reduce_max_ps(a); }
  // out[i] = sum of a[i]'s lanes for 16 registers, in one tree: fold 256-bit halves of pairs
  // (a_i, a_i+4), then 128-bit quarters of pairs (u_i, u_i+8), then a 4x4 transpose inside each
  // 128-bit lane; 45 ops instead of 16 separate reductions of about 8 dependent ops each.
  static void hsums(const R* a, float* out) {
    R u[16];
    for (int x = 0; x < 8; ++x) {
      const int i = x < 4 ? x : x + 4;  // 0..3, 8..11
      u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[i], a[i + 4], 0x44), _mm512_shuffle_f32x4(a[i], a[i + 4], 0xEE));
    }
    R y[4];  // y_i's 128-bit blocks: partial sums of a_i, a_i+4, a_i+8, a_i+12
    for (int i = 0; i < 4; ++i)
      y[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[i], u[i + 8], 0x88), _mm512_shuffle_f32x4(u[i], u[i + 8], 0xDD));
    const R s01 = _mm512_add_ps(_mm512_unpacklo_ps(y[0], y[1]), _mm512_unpackhi_ps(y[0], y[1]));
    const R s23 = _mm512_add_ps(_mm512_unpacklo_ps(y[2], y[3]), _mm512_unpackhi_ps(y[2], y[3]));
    store(out, _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xEE)));
  }
  static R exp(R x) {
    const __mmask16 live = _mm512_cmp_ps_mask(x, set1(kExpLo), _CMP_GE_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, set1(kExpLo)), set1(kExpHi));
    const R n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, set1(kLog2e), set1(0.5f)), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(n, set1(kLn2Hi), x);
    x = _mm512_fnmadd_ps(n, set1(kLn2Lo), x);
    R y = set1(kP0);
    y = _mm512_fmadd_ps(y, x, set1(kP1));
    y = _mm512_fmadd_ps(y, x, set1(kP2));
    y = _mm512_fmadd_ps(y, x, set1(kP3));
    y = _mm512_fmadd_ps(y, x, set1(kP4));
    y = _mm512_fmadd_ps(y, x, set1(kP5));
    y = _mm512_fmadd_ps(_mm512_mul_ps(y, x), x, _mm512_add_ps(x, set1(1.0f)));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps(live, y, _mm512_castsi512_ps(e));
  }
  // bf16 is the high half of an fp32. One load of 2W elements: shifting each 32-bit lane left by
  // 16 gives the even elements, masking off its low half the odd ones.
  static constexpr bool kBf16EvenOdd = true;
  static void load2_bf16(const uint16_t* src, R& even, R& odd) {
    const __m512i x = _mm512_loadu_si512(src);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
  }
  static R load_f16(const uint16_t* src) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  }
};

}  // namespace

void run_split_avx512(const Head& head, int64_t key_begin, int64_t key_end, const Scratch& scratch, float* states) {
  run_split<Avx512>(head, key_begin, key_end, scratch, states);
}

}  // namespace headinfer::cpu::host_kernel
