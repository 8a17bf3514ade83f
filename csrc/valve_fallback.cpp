// Strided fallback of kasmina::valve and its backward, for layouts the dense
// kernels do not walk. Device-agnostic ATen ops: correct everywhere, several
// passes. The math is the kernels' (csrc/cpu/valve.cpp).
#include "checks.h"
#include "layout.h"

namespace kasmina {

at::Tensor valve_fallback(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha, at::Tensor out) {
  const at::ScalarType acc = acc_dtype(host);
  const at::Tensor h = host.to(acc);
  out.copy_(h * (1 + alpha.clamp(0, 1).to(acc) * at::tanh(seed.to(acc) - h)));
  return out;
}

void valve_backward_fallback(const at::Tensor& grad, const at::Tensor& host, const at::Tensor& seed,
                             const at::Tensor& alpha, bool isolate, std::array<bool, 3> mask, at::Tensor& d_host,
                             at::Tensor& d_seed, at::Tensor& d_alpha) {
  const at::ScalarType acc = acc_dtype(host);
  const at::Tensor w = alpha.clamp(0, 1).to(acc);
  const at::Tensor g = grad.to(acc);
  const at::Tensor h = host.to(acc);
  const at::Tensor t = at::tanh(seed.to(acc) - h);
  const at::Tensor q = g * h * w * (1 - t * t);  // d_seed
  if (mask[0]) d_host.copy_(isolate ? g * (1 + w * t) : g * (1 + w * t) - q);
  if (mask[1]) d_seed.copy_(q);
  if (mask[2]) fallback_d_alpha(g * h * t, alpha, d_alpha);
}

}  // namespace kasmina
