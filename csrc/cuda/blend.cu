// kasmina::blend and kasmina::blend_backward on CUDA: the launchers. The math,
// memory traffic and work layout are described with the kernels, in
// blend_kernels.cuh. Launched on the current stream; the backward is one
// kernel, d_alpha included (its counters and partials are the stream's
// scratch, stream_scratch.h).
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>

#include "../checks.h"
#include "../layout.h"
#include "../stream_scratch.h"
#include "blend_kernels.cuh"
#include "launch.h"

namespace kasmina {

at::Tensor blend_cuda(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha) {
  check_blend_args(host, seed, alpha, "kasmina::blend");
  const c10::cuda::CUDAGuard guard(host.device());
  at::Tensor out = at::empty_like(host);
  const Blocks blk = dense_blocks(host, alpha.dim() > 0, {&seed, &out});
  if (!blk.dense) return blend_fallback(host, seed, alpha, out);
  if (host.numel() == 0) return out;
  const at::Tensor a = alpha_acc(alpha, host);
  const int64_t astride = a.dim() == 0 ? 0 : a.stride(0);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, host.scalar_type(), "kasmina_blend_cuda", [&] {
    using A = typename Acc<scalar_t>::type;
    constexpr int V = 16 / sizeof(scalar_t);
    const scalar_t* h = host.const_data_ptr<scalar_t>();
    const scalar_t* s = seed.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const A* ap = a.const_data_ptr<A>();
    if (blk.N % V == 0 && aligned16({h, s, o})) {
      blend_forward_kernel<scalar_t, V>
          <<<grid_for(blk.B, blk.N / V), kBlendThreads, 0, stream>>>(h, s, o, ap, astride, blk.B, blk.N);
    } else {
      blend_forward_kernel<scalar_t, 1>
          <<<grid_for(blk.B, blk.N), kBlendThreads, 0, stream>>>(h, s, o, ap, astride, blk.B, blk.N);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> blend_backward_cuda(const at::Tensor& grad, const at::Tensor& host,
                                                                   const at::Tensor& seed, const at::Tensor& alpha,
                                                                   std::array<bool, 3> mask) {
  const c10::cuda::CUDAGuard guard(host.device());
  const BackwardPlan plan = plan_blend_backward(grad, host, seed, alpha, mask);
  if (plan.done) return plan.outputs();
  const Blocks& blk = plan.blocks;
  const at::Tensor &d_host = plan.d_host, &d_seed = plan.d_seed, &d_alpha = plan.d_alpha;
  const at::Tensor a = alpha_acc(alpha, host);
  const int64_t astride = a.dim() == 0 ? 0 : a.stride(0);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, host.scalar_type(), "kasmina_blend_backward_cuda", [&] {
    using A = typename Acc<scalar_t>::type;
    constexpr int V = 16 / sizeof(scalar_t);
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* h = mask[2] ? host.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* s = mask[2] ? seed.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* dh = mask[0] ? d_host.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* ds = mask[1] ? d_seed.mutable_data_ptr<scalar_t>() : nullptr;
    const A* ap = a.const_data_ptr<A>();
    const bool vec = blk.N % V == 0 && aligned16({g, h, s, dh, ds});
    const dim3 grid = grid_for(blk.B, vec ? blk.N / V : blk.N);
    // d_alpha: in the accumulation dtype (a temporary when alpha's differs);
    // with several blocks per sample, B * grid.x partials and B counters from
    // the stream's scratch, whose counters the kernel leaves at zero (no
    // allocation, no memset per call: stream_scratch.h)
    at::Tensor da;
    CounterScratch scratch;
    A *pp = nullptr, *dap = nullptr;
    if (mask[2]) {
      da = d_alpha.scalar_type() == a.scalar_type() ? d_alpha : at::empty(alpha.sizes(), a.options());
      dap = da.mutable_data_ptr<A>();
      if (grid.x > 1) {
        scratch = counter_scratch(host.device(), blk.B,
                                  blk.B * static_cast<int64_t>(grid.x) * static_cast<int64_t>(sizeof(A)));
        pp = static_cast<A*>(scratch.partials);
      }
    }
    unsigned* counters = scratch.counters;
    auto launch = [&](auto vec_width, auto with_da) {
      constexpr int VW = decltype(vec_width)::value;
      constexpr bool DA = decltype(with_da)::value;
      blend_backward_kernel<scalar_t, VW, DA>
          <<<grid, kBlendThreads, 0, stream>>>(g, h, s, dh, ds, ap, astride, pp, counters, dap, blk.B, blk.N);
    };
    if (vec && mask[2]) {
      launch(std::integral_constant<int, V>{}, std::true_type{});
    } else if (vec) {
      launch(std::integral_constant<int, V>{}, std::false_type{});
    } else if (mask[2]) {
      launch(std::integral_constant<int, 1>{}, std::true_type{});
    } else {
      launch(std::integral_constant<int, 1>{}, std::false_type{});
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (mask[2] && !da.is_same(d_alpha)) d_alpha.copy_(da);
  });
  return plan.outputs();
}

}  // namespace kasmina

TORCH_LIBRARY_IMPL(kasmina, CUDA, m) {
  m.impl("blend", &kasmina::blend_cuda);
  m.impl("blend_backward", &kasmina::blend_backward_cuda);
}
