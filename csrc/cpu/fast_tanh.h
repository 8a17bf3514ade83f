// tanh for the CPU kernels, written so that the compiler vectorizes the loops
// that call it (no library call, no branch: both halves computed, one chosen).
//
// fp32, |x| < 0.5: the odd Taylor series to x^13 (truncation below 3e-9 |x|);
// |x| >= 0.5: sign(x) (1 - e) / (1 + e), e = exp(-2|x|) <= e^-1 (no cancellation),
// exp by Cody-Waite reduction y = n ln2 + r, |r| <= ln2 / 2, a degree-7 Taylor
// polynomial of e^r and 2^n from the exponent bits (y clamped to -87: e stays a
// normal float, and tanh rounds to +-1 long before). Max error against fp64 tanh
// about 2 ulp (tests/ops/test_valve.py measures it); NaN in, NaN out; +-inf gives +-1.
// fp64 uses std::tanh.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace kasmina::cpu {

inline float tanh_fast(float x) {
  const float a = std::fabs(x);
  // small |x|: x - x^3/3 + 2x^5/15 - 17x^7/315 + 62x^9/2835 - 1382x^11/155925 + 21844x^13/6081075
  const float z = a * a;
  float p = 21844.0f / 6081075.0f;
  p = p * z - 1382.0f / 155925.0f;
  p = p * z + 62.0f / 2835.0f;
  p = p * z - 17.0f / 315.0f;
  p = p * z + 2.0f / 15.0f;
  p = p * z - 1.0f / 3.0f;
  const float small = a + a * z * p;
  // large |x|: e = exp(y), y = -2|x| in [-87, -1]
  float y = -2.0f * a;
  y = y < -87.0f ? -87.0f : y;
  const float fn = (y * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(y / ln2)
  const float r = (y - fn * 0.693145751953125f) - fn * 1.42860682030941723e-6f;
  float q = 1.0f / 5040.0f;
  q = q * r + 1.0f / 720.0f;
  q = q * r + 1.0f / 120.0f;
  q = q * r + 1.0f / 24.0f;
  q = q * r + 1.0f / 6.0f;
  q = q * r + 0.5f;
  q = q * r + 1.0f;
  q = q * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fn) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float e = q * scale;
  const float large = (1.0f - e) / (1.0f + e);
  const float t = a < 0.5f ? small : large;
  const float signed_t = std::copysign(t, x);
  return x != x ? x : signed_t;
}

inline double tanh_fast(double x) { return std::tanh(x); }

}  // namespace kasmina::cpu
