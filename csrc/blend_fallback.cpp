// Strided fallback of kasmina::blend and its backward, for layouts the dense
// kernels do not walk (non-dense views, host and seed with different
// strides), and the backward's shared prologue. Device-agnostic ATen ops:
// correct everywhere, several passes.
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
  if (mask[2]) {
    const at::Tensor prod = g * (seed.to(acc) - host.to(acc));
    const at::Tensor sum = alpha.dim() > 0 ? prod.sum_to_size(alpha.sizes()) : prod.sum();
    // like clamp's backward: outside [0, 1] the gradient is 0, even a NaN one
    const at::Tensor inside = (alpha >= 0).logical_and_(alpha <= 1);
    d_alpha.copy_(at::where(inside, sum, at::zeros({}, sum.options())));
  }
}

BlendBackwardPlan plan_blend_backward(const at::Tensor& grad, const at::Tensor& host, const at::Tensor& seed,
                                      const at::Tensor& alpha, std::array<bool, 3> mask) {
  check_blend_backward_args(grad, host, seed, alpha);
  BlendBackwardPlan plan;
  auto none = [](const at::Tensor& like) { return at::empty({0}, like.options()); };
  plan.d_host = mask[0] ? at::empty_like(host) : none(host);
  plan.d_seed = mask[1] ? at::empty_like(host) : none(host);
  plan.d_alpha = mask[2] ? at::empty(alpha.sizes(), alpha.options()) : none(alpha);
  plan.blocks = backward_blocks(grad, host, seed, plan.d_host, plan.d_seed, alpha.dim() > 0, mask);
  if (!plan.blocks.dense) {
    blend_backward_fallback(grad, host, seed, alpha, mask, plan.d_host, plan.d_seed, plan.d_alpha);
    plan.done = true;
  } else if (host.numel() == 0 || (!mask[0] && !mask[1] && !mask[2])) {
    if (mask[2]) plan.d_alpha.zero_();
    plan.done = true;
  }
  return plan;
}

}  // namespace kasmina
