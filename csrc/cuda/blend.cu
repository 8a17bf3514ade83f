// kasmina::blend and kasmina::blend_backward on CUDA: the launchers. The math,
// memory traffic and work layout are described with the kernels, in
// blend_kernels.cuh; what every pointwise launcher does is in launch.h.
// Launched on the current stream; the backward is one kernel, d_alpha included
// (its counters and partials are the stream's scratch, stream_scratch.h).
#include <torch/library.h>

#include "../checks.h"
#include "../layout.h"
#include "blend_kernels.cuh"
#include "launch.h"

namespace kasmina {

at::Tensor blend_cuda(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha) {
  check_blend_args(host, seed, alpha, "kasmina::blend");
  return pointwise_forward(
      host, seed, alpha, [&](at::Tensor out) { return blend_fallback(host, seed, alpha, out); },
      [](auto vw, dim3 grid, cudaStream_t stream, const auto& x) {
        using T = std::remove_const_t<std::remove_pointer_t<decltype(x.h)>>;
        blend_forward_kernel<T, decltype(vw)::value>
            <<<grid, kBlendThreads, 0, stream>>>(x.h, x.s, x.o, x.alpha, x.astride, x.B, x.N);
      });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> blend_backward_cuda(const at::Tensor& grad, const at::Tensor& host,
                                                                   const at::Tensor& seed, const at::Tensor& alpha,
                                                                   std::array<bool, 3> mask) {
  const c10::cuda::CUDAGuard guard(host.device());
  const BackwardPlan plan = plan_blend_backward(grad, host, seed, alpha, mask);
  if (plan.done) return plan.outputs();
  pointwise_backward(plan, grad, host, seed, alpha, mask, false,
                     [](auto vw, auto da, dim3 grid, cudaStream_t stream, const auto& x) {
                       using T = std::remove_const_t<std::remove_pointer_t<decltype(x.g)>>;
                       blend_backward_kernel<T, decltype(vw)::value, decltype(da)::value>
                           <<<grid, kBlendThreads, 0, stream>>>(x.g, x.h, x.s, x.dh, x.ds, x.alpha, x.astride,
                                                                x.partials, x.counters, x.d_alpha, x.B, x.N);
                     });
  return plan.outputs();
}

}  // namespace kasmina

TORCH_LIBRARY_IMPL(kasmina, CUDA, m) {
  m.impl("blend", &kasmina::blend_cuda);
  m.impl("blend_backward", &kasmina::blend_backward_cuda);
}
