// The AVX-512 host attention path (compiled with -mavx512f; run only where __builtin_cpu_supports
// says so). V is 16 floats: a 128-dim head row is 8 registers, so the accumulator of one query
// head stays in registers across a tile.
#include <immintrin.h>

#include "host_attention_kernel.h"

namespace headinfer::cpu::host_kernel {
namespace {

struct Avx512 {
  using R = __m512;
  static constexpr int64_t W = 16;
  static R zero() { return _mm512_setzero_ps(); }
  static R set1(float x) { return _mm512_set1_ps(x); }
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, R x) { _mm512_storeu_ps(p, x); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static float hsum(R a) { return _mm512_reduce_add_ps(a); }
  static R exp(R x) {
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
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
  }
  static void widen_bf16(const uint16_t* src, float* dst) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    store(dst, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  }
  static void widen_f16(const uint16_t* src, float* dst) {
    store(dst, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src))));
  }
};

}  // namespace

void run_split_avx512(const Head& head, int64_t key_begin, int64_t key_end, const Scratch& scratch, float* states) {
  run_split<Avx512>(head, key_begin, key_end, scratch, states);
}

}  // namespace headinfer::cpu::host_kernel
