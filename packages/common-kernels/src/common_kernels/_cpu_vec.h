// Vector maths shared by common-kernels' C++ CPU kernels (_cpu_kernels.cpp, _cpu_rows.cpp), at
// torch's at::vec width: an exponential of non-positive arguments and torch's erf GELU on it.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

namespace common_kernels_vec {

using Vec = at::vec::Vectorized<float>;

// exp(x) for x <= 0 (a logit minus its row's maximum or log-sum-exp, or -z^2), exactly 0 at -inf
// and below 2^-126 (flushed): 2^n 2^f with n = round(x log2 e), n >= -127, |f| <= 1/2, 2^f a
// degree-5 polynomial (relative error 2.4e-7, fitted to 2^f on [-1/2, 1/2]), 2^n made in the
// exponent bits (n = -127: all zero bits, 0.0f). 14 vector ops against exp_u20's 17 (and its
// blend to exact zeros) or Sleef's expf8_u10.
inline Vec exp_nonpositive(const Vec& x) {
  using IVec = at::vec::Vectorized<int32_t>;
  const Vec round_magic(12582912.0f);  // 1.5 * 2^23: t + it holds round(t) in its low bits
  const Vec t = at::vec::clamp_min(x * Vec(1.44269504f), Vec(-127.0f));  // -inf -> -127
  const Vec shifted = t + round_magic;
  const Vec f = t - (shifted - round_magic);
  Vec p = at::vec::fmadd(Vec(1.327647129e-03f), f, Vec(9.675541893e-03f));
  p = at::vec::fmadd(p, f, Vec(5.550713092e-02f));
  p = at::vec::fmadd(p, f, Vec(2.402212024e-01f));
  p = at::vec::fmadd(p, f, Vec(6.931469440e-01f));
  p = at::vec::fmadd(p, f, Vec(1.000000119e+00f));
  const IVec bits = (at::vec::cast<int32_t>(shifted) + IVec(127)) << IVec(23);  // (n + 127) << 23
  return p * at::vec::cast<float>(bits);
}

// GELU, x (1 + erf(x / sqrt 2)) / 2, with erf as torch's at::vec computes it for F.gelu
// (Abramowitz & Stegun 7.1.26: sign(z) (1 - t P(t) exp(-z^2)), t = 1 / (1 + p |z|), absolute
// error <= 1.5e-7) and exp(-z^2) by exp_nonpositive: within 3e-7 of the fp64 GELU (times |x|).
inline Vec gelu(const Vec& x) {
  const Vec z = x * Vec(0.70710678118654752f);
  const Vec sign = z & Vec(-0.0f);
  const Vec t = Vec(1.0f) / at::vec::fmadd(Vec(0.3275911f), z ^ sign, Vec(1.0f));
  Vec r = at::vec::fmadd(Vec(1.061405429f), t, Vec(-1.453152027f));
  r = at::vec::fmadd(r, t, Vec(1.421413741f));
  r = at::vec::fmadd(r, t, Vec(-0.284496736f));
  r = at::vec::fmadd(r, t, Vec(0.254829592f));
  const Vec e = exp_nonpositive((z * z) ^ Vec(-0.0f));  // exp(-z^2)
  const Vec erf = at::vec::fnmadd(e * t, r, Vec(1.0f)) ^ sign;
  return x * Vec(0.5f) * (Vec(1.0f) + erf);
}

}  // namespace common_kernels_vec
