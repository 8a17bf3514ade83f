// Strided fallback of kasmina::blend and its backward, for layouts the dense
// kernels do not walk (non-dense views, host and seed with different
// strides), and the d_alpha of every strided backward (valve's too).
// Device-agnostic ATen ops: correct everywhere, several passes.
#include "checks.h"
#include "layout.h"

namespace kasmina {

at::Tensor blend_fallback(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha, at::Tensor out) {
  const at::ScalarType acc = acc_dtype(host);
  out.copy_(at::lerp(host.to(acc), seed.to(acc), alpha.clamp(0, 1).to(acc)));
  return out;
}

void blend_backward_fallback(const at::Tensor& grad, const at::Tensor& host, const at::Tensor& seed,
                             const at::Tensor& alpha, std::array<bool, 3> mask, at::Tensor& d_host, at::Tensor& d_seed,
                             at::Tensor& d_alpha) {
  const at::ScalarType acc = acc_dtype(host);
  const at::Tensor w = alpha.clamp(0, 1).to(acc);
  const at::Tensor g = grad.to(acc);
  if (mask[0]) d_host.copy_(g * (1 - w));
  if (mask[1]) d_seed.copy_(g * w);
  if (mask[2]) fallback_d_alpha(g * (seed.to(acc) - host.to(acc)), alpha, d_alpha);
}

void fallback_d_alpha(const at::Tensor& prod, const at::Tensor& alpha, at::Tensor& d_alpha) {
  const at::Tensor sum = alpha.dim() > 0 ? prod.sum_to_size(alpha.sizes()) : prod.sum();
  // like clamp's backward: outside [0, 1] the gradient is 0, even a NaN one
  const at::Tensor inside = (alpha >= 0).logical_and_(alpha <= 1);
  d_alpha.copy_(at::where(inside, sum, at::zeros({}, sum.options())));
}

}  // namespace kasmina
