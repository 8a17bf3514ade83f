// kasmina::blend and kasmina::blend_backward on CUDA.
//
// Math (w = clamp(alpha, 0, 1), one weight per sample or for the whole tensor):
//   forward   out     = lerp(host, seed, w)      (torch.lerp's two-sided formula)
//   backward  d_host  = (1 - w) * g,  d_seed = w * g,
//             d_alpha = [0 <= alpha <= 1] * sum_{sample} g * (seed - host)
// Memory traffic on the dense path (contiguous / channels_last, same strides):
//   forward   reads host, seed; writes out                         3 passes
//   backward  reads g (+ host, seed for d_alpha); writes d_host, d_seed
//                                                                  3 or 5 passes
//   plus, for d_alpha, gridDim.x partial sums per sample and one tiny finalize.
// Layout of the work: a 2-D grid, blockIdx.y = sample (so no per-element
// division finds the sample), blockIdx.x strides over the sample's packed
// block in 16-byte vectors (when the block length and the pointers allow it).
// fp16/bf16 compute in fp32; 64-bit indices; launched on the current stream.
// d_alpha is deterministic: per-block partials in a fixed order, then a
// fixed-order finalize, no atomics.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>

#include "../checks.h"
#include "../layout.h"
#include "block_reduce.cuh"

namespace kasmina {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxGridY = 65535;

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};


template <typename A>
__device__ __forceinline__ A clamp01(A a) {
  return a != a ? a : (a < A(0) ? A(0) : (a > A(1) ? A(1) : a));
}

template <typename T, int V>
__global__ void blend_forward_kernel(const T* __restrict__ host, const T* __restrict__ seed, T* __restrict__ out,
                                     const typename Acc<T>::type* __restrict__ alpha, int64_t alpha_stride,
                                     int64_t B, int64_t N) {
  using A = typename Acc<T>::type;
  using VT = Vec<T, V>;
  const int64_t nvec = N / V;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const A w = clamp01(alpha[b * alpha_stride]);
    const bool small = w < A(0.5);
    const A omw = A(1) - w;
    const VT* h = reinterpret_cast<const VT*>(host + b * N);
    const VT* s = reinterpret_cast<const VT*>(seed + b * N);
    VT* o = reinterpret_cast<VT*>(out + b * N);
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec; i += step) {
      const VT hv = h[i];
      const VT sv = s[i];
      VT ov;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A x = static_cast<A>(hv.v[k]);
        const A y = static_cast<A>(sv.v[k]);
        ov.v[k] = static_cast<T>(small ? x + w * (y - x) : y - (y - x) * omw);
      }
      o[i] = ov;
    }
  }
}

template <typename T, int V, bool DA>
__global__ void blend_backward_kernel(const T* __restrict__ grad, const T* __restrict__ host,
                                      const T* __restrict__ seed, T* __restrict__ d_host, T* __restrict__ d_seed,
                                      const typename Acc<T>::type* __restrict__ alpha, int64_t alpha_stride,
                                      typename Acc<T>::type* __restrict__ partial, int64_t B, int64_t N) {
  using A = typename Acc<T>::type;
  using VT = Vec<T, V>;
  __shared__ A shared[32];
  const int64_t nvec = N / V;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const A w = clamp01(alpha[b * alpha_stride]);
    const A omw = A(1) - w;
    const VT* g = reinterpret_cast<const VT*>(grad + b * N);
    A acc = 0;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec; i += step) {
      const VT gv = g[i];
      VT dh, ds;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A x = static_cast<A>(gv.v[k]);
        dh.v[k] = static_cast<T>(x * omw);
        ds.v[k] = static_cast<T>(x * w);
      }
      if constexpr (DA) {
        const VT hv = reinterpret_cast<const VT*>(host + b * N)[i];
        const VT sv = reinterpret_cast<const VT*>(seed + b * N)[i];
#pragma unroll
        for (int k = 0; k < V; ++k) {
          acc += static_cast<A>(gv.v[k]) * (static_cast<A>(sv.v[k]) - static_cast<A>(hv.v[k]));
        }
      }
      if (d_host != nullptr) reinterpret_cast<VT*>(d_host + b * N)[i] = dh;
      if (d_seed != nullptr) reinterpret_cast<VT*>(d_seed + b * N)[i] = ds;
    }
    if constexpr (DA) {
      acc = block_sum(acc, shared);
      if (threadIdx.x == 0) partial[b * gridDim.x + blockIdx.x] = acc;
    }
  }
}

// d_alpha[b] = inside(alpha[b]) ? sum of the sample's partials : 0, in a fixed order.
template <typename A>
__global__ void d_alpha_finalize_kernel(const A* __restrict__ partial, int64_t parts, const A* __restrict__ alpha,
                                        int64_t alpha_stride, A* __restrict__ d_alpha, int64_t B) {
  __shared__ A shared[32];
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    A acc = 0;
    for (int64_t p = threadIdx.x; p < parts; p += blockDim.x) acc += partial[b * parts + p];
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) {
      const A a = alpha[b * alpha_stride];
      // like clamp's backward: outside [0, 1] the gradient is 0, even a NaN one
      d_alpha[b] = (a >= A(0) && a <= A(1)) ? acc : A(0);
    }
  }
}

bool aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs) {
    if (p != nullptr && reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return false;
  }
  return true;
}

// Multiprocessors of the current device, read once per device.
int64_t sm_count() {
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

// Grid: y = samples, x = enough blocks per sample to fill the GPU a few times.
dim3 grid_for(int64_t B, int64_t nvec) {
  const int64_t sms = sm_count();
  const int64_t gy = std::min<int64_t>(B, kMaxGridY);
  const int64_t want = std::max<int64_t>(1, ceil_div(sms * 8, gy));
  const int64_t gx = std::max<int64_t>(1, std::min<int64_t>(ceil_div(nvec, kThreads), want));
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
}

at::ScalarType acc_dtype(const at::Tensor& host) {
  return host.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// alpha in the accumulation dtype (no copy when it already is).
at::Tensor alpha_acc(const at::Tensor& alpha, const at::Tensor& host) { return alpha.to(acc_dtype(host)); }

}  // namespace

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
          <<<grid_for(blk.B, blk.N / V), kThreads, 0, stream>>>(h, s, o, ap, astride, blk.B, blk.N);
    } else {
      blend_forward_kernel<scalar_t, 1>
          <<<grid_for(blk.B, blk.N), kThreads, 0, stream>>>(h, s, o, ap, astride, blk.B, blk.N);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> blend_backward_cuda(const at::Tensor& grad, const at::Tensor& host,
                                                                   const at::Tensor& seed, const at::Tensor& alpha,
                                                                   std::array<bool, 3> mask) {
  const c10::cuda::CUDAGuard guard(host.device());
  const BlendBackwardPlan plan = plan_blend_backward(grad, host, seed, alpha, mask);
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
    at::Tensor partial;
    A* pp = nullptr;
    if (mask[2]) {
      partial = at::empty({blk.B * static_cast<int64_t>(grid.x)}, a.options());
      pp = partial.mutable_data_ptr<A>();
    }
    auto launch = [&](auto vec_width, auto with_da) {
      constexpr int VW = decltype(vec_width)::value;
      constexpr bool DA = decltype(with_da)::value;
      blend_backward_kernel<scalar_t, VW, DA>
          <<<grid, kThreads, 0, stream>>>(g, h, s, dh, ds, ap, astride, pp, blk.B, blk.N);
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
    if (mask[2]) {
      // d_alpha in the accumulation dtype, cast afterwards if alpha's differs
      at::Tensor da = d_alpha.scalar_type() == a.scalar_type() ? d_alpha : at::empty(alpha.sizes(), a.options());
      const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(blk.B, kMaxGridY));
      d_alpha_finalize_kernel<A><<<blocks, kThreads, 0, stream>>>(pp, grid.x, ap, astride, da.mutable_data_ptr<A>(),
                                                                  blk.B);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (!da.is_same(d_alpha)) d_alpha.copy_(da);
    }
  });
  return plan.outputs();
}

}  // namespace kasmina

TORCH_LIBRARY_IMPL(kasmina, CUDA, m) {
  m.impl("blend", &kasmina::blend_cuda);
  m.impl("blend_backward", &kasmina::blend_backward_cuda);
}
