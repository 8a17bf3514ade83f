// Device code of kasmina::valve and kasmina::valve_backward on CUDA (the
// launchers are in valve.cu; csrc/test/test_cuda_kernels.cpp runs these same
// kernels on the CPU under csrc/test/cuda_emulation.h).
//
// Math (w = clamp(alpha, 0, 1), one weight per sample or for the whole tensor;
// t = tanh(seed - host)):
//   forward   out     = host * (1 + w * t)
//   backward  d_seed  = g * host * w * (1 - t^2)
//             d_host  = g * (1 + w * t) - keep * d_seed     (keep = 0 when isolate)
//             d_alpha = [0 <= alpha <= 1] * sum_{sample} g * host * t
// Memory traffic on the dense path (contiguous / channels_last, same strides):
//   forward   reads host, seed; writes out                         3 passes
//   backward  reads g, host, seed; writes d_host, d_seed           5 passes
//   plus, for d_alpha, gridDim.x partial sums and one counter per sample.
// Work layout, vector widths, 64-bit indices and the deterministic d_alpha
// (finish_d_alpha) are blend's: blend_kernels.cuh.
#pragma once

#include <cmath>

#include "blend_kernels.cuh"

namespace kasmina {

__host__ __device__ __forceinline__ float tanh_acc(float x) { return tanhf(x); }
__host__ __device__ __forceinline__ double tanh_acc(double x) { return tanh(x); }

template <typename T, int V>
__global__ void valve_forward_kernel(const T* __restrict__ host, const T* __restrict__ seed, T* __restrict__ out,
                                     const typename Acc<T>::type* __restrict__ alpha, int64_t alpha_stride,
                                     int64_t B, int64_t N) {
  using A = typename Acc<T>::type;
  using VT = Vec<T, V>;
  const int64_t nvec = N / V;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const A w = clamp01(alpha[b * alpha_stride]);
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
        ov.v[k] = static_cast<T>(x * (A(1) + w * tanh_acc(static_cast<A>(sv.v[k]) - x)));
      }
      o[i] = ov;
    }
  }
}

// DA: compute d_alpha (partial, counter and d_alpha are then non-null; partial
// holds B * gridDim.x values, counter B zeros, left at zero when the kernel
// ends). d_host or d_seed may be null when not asked for.
template <typename T, int V, bool DA>
__global__ void valve_backward_kernel(const T* __restrict__ grad, const T* __restrict__ host,
                                      const T* __restrict__ seed, T* __restrict__ d_host, T* __restrict__ d_seed,
                                      const typename Acc<T>::type* __restrict__ alpha, int64_t alpha_stride,
                                      bool isolate, typename Acc<T>::type* __restrict__ partial,
                                      unsigned* __restrict__ counter, typename Acc<T>::type* __restrict__ d_alpha,
                                      int64_t B, int64_t N) {
  using A = typename Acc<T>::type;
  using VT = Vec<T, V>;
  __shared__ A shared[32];
  const int64_t nvec = N / V;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const A keep = isolate ? A(0) : A(1);
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const A a = alpha[b * alpha_stride];
    const A w = clamp01(a);
    const VT* g = reinterpret_cast<const VT*>(grad + b * N);
    const VT* h = reinterpret_cast<const VT*>(host + b * N);
    const VT* s = reinterpret_cast<const VT*>(seed + b * N);
    A acc = 0;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec; i += step) {
      const VT gv = g[i];
      const VT hv = h[i];
      const VT sv = s[i];
      VT dh, ds;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A gk = static_cast<A>(gv.v[k]);
        const A hk = static_cast<A>(hv.v[k]);
        const A t = tanh_acc(static_cast<A>(sv.v[k]) - hk);
        const A gh = gk * hk;
        const A q = gh * w * (A(1) - t * t);
        dh.v[k] = static_cast<T>(gk * (A(1) + w * t) - keep * q);
        ds.v[k] = static_cast<T>(q);
        if constexpr (DA) acc += gh * t;
      }
      if (d_host != nullptr) reinterpret_cast<VT*>(d_host + b * N)[i] = dh;
      if (d_seed != nullptr) reinterpret_cast<VT*>(d_seed + b * N)[i] = ds;
    }
    if constexpr (DA) finish_d_alpha(acc, a, b, shared, partial, counter, d_alpha);
  }
}

}  // namespace kasmina
