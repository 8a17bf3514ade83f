// kasmina::valve and kasmina::valve_backward on CUDA: the launchers. The math,
// memory traffic and work layout are described with the kernels, in
// valve_kernels.cuh; what every pointwise launcher does is in launch.h.
// Launched on the current stream; the backward is one kernel, d_alpha included
// (its counters and partials are the stream's scratch, stream_scratch.h).
#include <torch/library.h>

#include "../checks.h"
#include "../layout.h"
#include "launch.h"
#include "valve_kernels.cuh"

namespace kasmina {

at::Tensor valve_cuda(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha, bool isolate) {
  check_blend_args(host, seed, alpha, "kasmina::valve");
  return pointwise_forward(
      host, seed, alpha, [&](at::Tensor out) { return valve_fallback(host, seed, alpha, out); },
      [](auto vw, dim3 grid, cudaStream_t stream, const auto& x) {
        using T = std::remove_const_t<std::remove_pointer_t<decltype(x.h)>>;
        valve_forward_kernel<T, decltype(vw)::value>
            <<<grid, kBlendThreads, 0, stream>>>(x.h, x.s, x.o, x.alpha, x.astride, x.B, x.N);
      });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> valve_backward_cuda(const at::Tensor& grad, const at::Tensor& host,
                                                                   const at::Tensor& seed, const at::Tensor& alpha,
                                                                   bool isolate, std::array<bool, 3> mask) {
  const c10::cuda::CUDAGuard guard(host.device());
  const BackwardPlan plan = plan_valve_backward(grad, host, seed, alpha, isolate, mask);
  if (plan.done) return plan.outputs();
  pointwise_backward(plan, grad, host, seed, alpha, mask, true,
                     [isolate](auto vw, auto da, dim3 grid, cudaStream_t stream, const auto& x) {
                       using T = std::remove_const_t<std::remove_pointer_t<decltype(x.g)>>;
                       valve_backward_kernel<T, decltype(vw)::value, decltype(da)::value>
                           <<<grid, kBlendThreads, 0, stream>>>(x.g, x.h, x.s, x.dh, x.ds, x.alpha, x.astride,
                                                                isolate, x.partials, x.counters, x.d_alpha, x.B,
                                                                x.N);
                     });
  return plan.outputs();
}

}  // namespace kasmina

TORCH_LIBRARY_IMPL(kasmina, CUDA, m) {
  m.impl("valve", &kasmina::valve_cuda);
  m.impl("valve_backward", &kasmina::valve_backward_cuda);
}
