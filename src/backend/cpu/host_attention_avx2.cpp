// The AVX2 host attention path (compiled with -mavx2 -mfma -mf16c; run only where
// __builtin_cpu_supports says so). V is 8 floats; a score block is 2 keys x 4 heads (or 4 x 2,
// 8 x 1): 8 accumulators, so with the widened K chunks and q the block fits the 16 registers.
#include <immintrin.h>

#include "host_attention_kernel.h"

namespace headinfer::cpu::host_kernel {
namespace {

struct Avx2 {
  using R = __m256;
  static constexpr int64_t W = 8;
  static constexpr int kAcc = 8;
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float x) { return _mm256_set1_ps(x); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, R x) { _mm256_storeu_ps(p, x); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R max(R a, R b) { return _mm256_max_ps(a, b); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static float hsum(R a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float hmax(R a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // out[i] = sum of a[i]'s lanes for 8 registers, in one tree: fold the 128-bit halves of pairs
  // (a_i, a_i+4), then a 4x4 transpose inside each half.
  static void hsums(const R* a, float* out) {
    R u[4];
    for (int i = 0; i < 4; ++i)
      u[i] = _mm256_add_ps(_mm256_permute2f128_ps(a[i], a[i + 4], 0x20), _mm256_permute2f128_ps(a[i], a[i + 4], 0x31));
    const R s01 = _mm256_add_ps(_mm256_unpacklo_ps(u[0], u[1]), _mm256_unpackhi_ps(u[0], u[1]));
    const R s23 = _mm256_add_ps(_mm256_unpacklo_ps(u[2], u[3]), _mm256_unpackhi_ps(u[2], u[3]));
    store(out, _mm256_add_ps(_mm256_shuffle_ps(s01, s23, 0x44), _mm256_shuffle_ps(s01, s23, 0xEE)));
  }
  static R exp(R x) {
    const R live = _mm256_cmp_ps(x, set1(kExpLo), _CMP_GE_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, set1(kExpLo)), set1(kExpHi));
    const R n = _mm256_floor_ps(_mm256_fmadd_ps(x, set1(kLog2e), set1(0.5f)));
    x = _mm256_fnmadd_ps(n, set1(kLn2Hi), x);
    x = _mm256_fnmadd_ps(n, set1(kLn2Lo), x);
    R y = set1(kP0);
    y = _mm256_fmadd_ps(y, x, set1(kP1));
    y = _mm256_fmadd_ps(y, x, set1(kP2));
    y = _mm256_fmadd_ps(y, x, set1(kP3));
    y = _mm256_fmadd_ps(y, x, set1(kP4));
    y = _mm256_fmadd_ps(y, x, set1(kP5));
    y = _mm256_fmadd_ps(_mm256_mul_ps(y, x), x, _mm256_add_ps(x, set1(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(live, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
  }
  // bf16 is the high half of an fp32. One load of 2W elements: shifting each 32-bit lane left by
  // 16 gives the even elements, masking off its low half the odd ones.
  static constexpr bool kBf16EvenOdd = true;
  static void load2_bf16(const uint16_t* src, R& even, R& odd) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    even = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  }
  static R load_f16(const uint16_t* src) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  }
};

}  // namespace

void run_split_avx2(const Head& head, int64_t key_begin, int64_t key_end, const Scratch& scratch, float* states) {
  run_split<Avx2>(head, key_begin, key_end, scratch, states);
}

}  // namespace headinfer::cpu::host_kernel
