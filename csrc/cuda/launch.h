// Host-side launchers of the pointwise CUDA kernels (blend.cu, valve.cu): the
// layout rule, the fallback, the dtype dispatch, the vector width, the grid, the
// d_alpha scratch, all written once; each op passes the lambda that launches its
// kernel template with the chosen <scalar_t, V (, DA)>.
#pragma once

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "../layout.h"
#include "../stream_scratch.h"
#include "blend_kernels.cuh"

namespace kasmina {

// True when every non-null pointer allows 16-byte vector loads and stores.
inline bool aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs) {
    if (p != nullptr && reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return false;
  }
  return true;
}

// Multiprocessors of the current device, read once per device.
inline int64_t sm_count() {
  static std::array<int, 64> cache{};
  const int dev = c10::cuda::current_device();
  if (dev >= 64) return 132;
  if (cache[dev] == 0) {
    int n = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    cache[dev] = n;
  }
  return cache[dev];
}

// blend_grid for the current device.
inline dim3 grid_for(int64_t B, int64_t nvec) { return blend_grid(B, nvec, sm_count()); }

// What a forward kernel reads and writes (T: the tensors' dtype, A: the accumulation's).
template <typename T>
struct ForwardArgs {
  const T* h;
  const T* s;
  T* o;
  const typename Acc<T>::type* alpha;
  int64_t astride, B, N;
};

// What a backward kernel reads and writes; partials/counters are the stream's
// scratch when d_alpha takes several blocks a sample, d_alpha null when not asked.
template <typename T>
struct BackwardArgs {
  const T* g;
  const T* h;
  const T* s;
  T* dh;
  T* ds;
  const typename Acc<T>::type* alpha;
  int64_t astride;
  typename Acc<T>::type* partials;
  unsigned* counters;
  typename Acc<T>::type* d_alpha;
  int64_t B, N;
};

// The forward of a pointwise op on CUDA (arguments already checked): a new tensor
// laid out like host; strided layouts go to `fallback(out)`. `launch(V, grid,
// stream, args)` launches the op's kernel with vector width V (an
// integral_constant: 16 bytes when the block length and the pointers allow it).
template <typename Fallback, typename Launch>
at::Tensor pointwise_forward(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha,
                             const Fallback& fallback, const Launch& launch) {
  const c10::cuda::CUDAGuard guard(host.device());
  at::Tensor out = at::empty_like(host);
  const Blocks blk = dense_blocks(host, alpha.dim() > 0, {&seed, &out});
  if (!blk.dense) return fallback(out);
  if (host.numel() == 0) return out;
  const at::Tensor a = alpha_acc(alpha, host);
  const int64_t astride = a.dim() == 0 ? 0 : a.stride(0);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, host.scalar_type(), "kasmina_forward_cuda", [&] {
    using A = typename Acc<scalar_t>::type;
    constexpr int V = 16 / sizeof(scalar_t);
    const ForwardArgs<scalar_t> args{host.const_data_ptr<scalar_t>(), seed.const_data_ptr<scalar_t>(),
                                     out.mutable_data_ptr<scalar_t>(), a.const_data_ptr<A>(), astride, blk.B, blk.N};
    if (blk.N % V == 0 && aligned16({args.h, args.s, args.o})) {
      launch(std::integral_constant<int, V>{}, grid_for(blk.B, blk.N / V), stream, args);
    } else {
      launch(std::integral_constant<int, 1>{}, grid_for(blk.B, blk.N), stream, args);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// The backward of a pointwise op on CUDA, after its plan (plan_*_backward) left
// work for the dense kernels. `reads_inputs`: the kernel reads host and seed for
// every output (valve), not only for d_alpha (blend). `launch(V, DA, grid, stream,
// args)` launches the op's kernel (V and DA integral_constants). d_alpha is
// computed in the accumulation dtype (a temporary when alpha's differs); with
// several blocks a sample, B * grid.x partials and B counters come from the
// stream's scratch, whose counters the kernel leaves at zero (no allocation, no
// memset per call: stream_scratch.h).
template <typename Launch>
void pointwise_backward(const BackwardPlan& plan, const at::Tensor& grad, const at::Tensor& host,
                        const at::Tensor& seed, const at::Tensor& alpha, std::array<bool, 3> mask, bool reads_inputs,
                        const Launch& launch) {
  const Blocks& blk = plan.blocks;
  const at::Tensor a = alpha_acc(alpha, host);
  const int64_t astride = a.dim() == 0 ? 0 : a.stride(0);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, host.scalar_type(), "kasmina_backward_cuda", [&] {
    using A = typename Acc<scalar_t>::type;
    constexpr int V = 16 / sizeof(scalar_t);
    const bool inputs = reads_inputs || mask[2];
    BackwardArgs<scalar_t> args{grad.const_data_ptr<scalar_t>(),
                                inputs ? host.const_data_ptr<scalar_t>() : nullptr,
                                inputs ? seed.const_data_ptr<scalar_t>() : nullptr,
                                mask[0] ? plan.d_host.mutable_data_ptr<scalar_t>() : nullptr,
                                mask[1] ? plan.d_seed.mutable_data_ptr<scalar_t>() : nullptr,
                                a.const_data_ptr<A>(),
                                astride,
                                nullptr,
                                nullptr,
                                nullptr,
                                blk.B,
                                blk.N};
    const bool vec = blk.N % V == 0 && aligned16({args.g, args.h, args.s, args.dh, args.ds});
    const dim3 grid = grid_for(blk.B, vec ? blk.N / V : blk.N);
    at::Tensor da;
    CounterScratch scratch;
    if (mask[2]) {
      da = plan.d_alpha.scalar_type() == a.scalar_type() ? plan.d_alpha : at::empty(alpha.sizes(), a.options());
      args.d_alpha = da.mutable_data_ptr<A>();
      if (grid.x > 1) {
        scratch = counter_scratch(host.device(), blk.B,
                                  blk.B * static_cast<int64_t>(grid.x) * static_cast<int64_t>(sizeof(A)));
        args.partials = static_cast<A*>(scratch.partials);
        args.counters = scratch.counters;
      }
    }
    if (vec && mask[2]) {
      launch(std::integral_constant<int, V>{}, std::true_type{}, grid, stream, args);
    } else if (vec) {
      launch(std::integral_constant<int, V>{}, std::false_type{}, grid, stream, args);
    } else if (mask[2]) {
      launch(std::integral_constant<int, 1>{}, std::true_type{}, grid, stream, args);
    } else {
      launch(std::integral_constant<int, 1>{}, std::false_type{}, grid, stream, args);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (mask[2] && !da.is_same(plan.d_alpha)) plan.d_alpha.copy_(da);
  });
}

}  // namespace kasmina
