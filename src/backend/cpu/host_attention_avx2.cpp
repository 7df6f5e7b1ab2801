// The AVX2 host attention path (compiled with -mavx2 -mfma -mf16c; run only where
// __builtin_cpu_supports says so). V is 8 floats.
#include <immintrin.h>

#include "host_attention_kernel.h"

namespace headinfer::cpu::host_kernel {
namespace {

struct Avx2 {
  using R = __m256;
  static constexpr int64_t W = 8;
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float x) { return _mm256_set1_ps(x); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, R x) { _mm256_storeu_ps(p, x); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static float hsum(R a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static R exp(R x) {
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
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  }
  static void widen_bf16(const uint16_t* src, float* dst) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    store(dst, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
  }
  static void widen_f16(const uint16_t* src, float* dst) {
    store(dst, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
  }
};

}  // namespace

void run_split_avx2(const Head& head, int64_t key_begin, int64_t key_end, const Scratch& scratch, float* states) {
  run_split<Avx2>(head, key_begin, key_end, scratch, states);
}

}  // namespace headinfer::cpu::host_kernel
