// The shared prologue of the blend_backward and valve_backward kernels (CPU and
// CUDA): check, allocate, and answer at once what the dense kernels do not
// walk (layout.h, BackwardPlan).
#include "checks.h"
#include "layout.h"

namespace kasmina {
namespace {

// `reads_inputs`: the op's backward reads host and seed for every output (valve),
// not only for d_alpha (blend). `fallback` fills the outputs of a strided call.
template <typename Fallback>
BackwardPlan plan_backward(const at::Tensor& grad, const at::Tensor& host, const at::Tensor& seed,
                           const at::Tensor& alpha, std::array<bool, 3> mask, bool reads_inputs,
                           const Fallback& fallback) {
  BackwardPlan plan;
  auto none = [](const at::Tensor& like) { return at::empty({0}, like.options()); };
  plan.d_host = mask[0] ? at::empty_like(host) : none(host);
  plan.d_seed = mask[1] ? at::empty_like(host) : none(host);
  plan.d_alpha = mask[2] ? at::empty(alpha.sizes(), alpha.options()) : none(alpha);
  plan.blocks = backward_blocks(grad, host, seed, plan.d_host, plan.d_seed, alpha.dim() > 0, mask, reads_inputs);
  if (!plan.blocks.dense) {
    fallback(plan);
    plan.done = true;
  } else if (host.numel() == 0 || (!mask[0] && !mask[1] && !mask[2])) {
    if (mask[2]) plan.d_alpha.zero_();
    plan.done = true;
  }
  return plan;
}

}  // namespace

BackwardPlan plan_blend_backward(const at::Tensor& grad, const at::Tensor& host, const at::Tensor& seed,
                                 const at::Tensor& alpha, std::array<bool, 3> mask) {
  check_blend_backward_args(grad, host, seed, alpha);
  return plan_backward(grad, host, seed, alpha, mask, false, [&](BackwardPlan& p) {
    blend_backward_fallback(grad, host, seed, alpha, mask, p.d_host, p.d_seed, p.d_alpha);
  });
}

BackwardPlan plan_valve_backward(const at::Tensor& grad, const at::Tensor& host, const at::Tensor& seed,
                                 const at::Tensor& alpha, bool isolate, std::array<bool, 3> mask) {
  check_blend_backward_args(grad, host, seed, alpha, "kasmina::valve_backward");
  return plan_backward(grad, host, seed, alpha, mask, true, [&](BackwardPlan& p) {
    valve_backward_fallback(grad, host, seed, alpha, isolate, mask, p.d_host, p.d_seed, p.d_alpha);
  });
}

}  // namespace kasmina
