// The portable host attention path: V is one float, so it runs on any CPU (and is the path the
// vector ones are checked against besides the double-precision reference).
#include "host_attention_kernel.h"

namespace headinfer::cpu::host_kernel {
namespace {

struct Scalar {
  using R = float;
  static constexpr int64_t W = 1;
  static constexpr int kAcc = 16;
  static R zero() { return 0.0f; }
  static R set1(float x) { return x; }
  static R load(const float* p) { return *p; }
  static void store(float* p, R x) { *p = x; }
  static R add(R a, R b) { return a + b; }
  static R sub(R a, R b) { return a - b; }
  static R mul(R a, R b) { return a * b; }
  static R max(R a, R b) { return a > b ? a : b; }
  static R fma(R a, R b, R c) { return a * b + c; }
  static float hsum(R a) { return a; }
  static float hmax(R a) { return a; }
  static void hsums(const R* a, float* out) {
    for (int i = 0; i < kAcc; ++i) out[i] = a[i];
  }
  static R exp(R x) { return x < kExpLo ? 0.0f : exp_poly_scalar(x); }
  static constexpr bool kBf16EvenOdd = false;
  static void load2_bf16(const uint16_t* src, R& a, R& b) {
    a = bf16_bits_to_f32(src[0]);
    b = bf16_bits_to_f32(src[1]);
  }
  static R load_f16(const uint16_t* src) { return f16_bits_to_f32(*src); }
};

}  // namespace

void run_split_scalar(const Head& head, int64_t key_begin, int64_t key_end, const Scratch& scratch, float* states) {
  run_split<Scalar>(head, key_begin, key_end, scratch, states);
}

}  // namespace headinfer::cpu::host_kernel
