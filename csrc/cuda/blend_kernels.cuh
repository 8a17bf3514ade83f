// Device code of kasmina::blend and kasmina::blend_backward on CUDA (the
// launchers are in blend.cu; csrc/test/test_cuda_kernels.cpp runs these same
// kernels on the CPU under csrc/test/cuda_emulation.h).
//
// Math (w = clamp(alpha, 0, 1), one weight per sample or for the whole tensor):
//   forward   out     = lerp(host, seed, w)      (torch.lerp's two-sided formula)
//   backward  d_host  = (1 - w) * g,  d_seed = w * g,
//             d_alpha = [0 <= alpha <= 1] * sum_{sample} g * (seed - host)
// Memory traffic on the dense path (contiguous / channels_last, same strides):
//   forward   reads host, seed; writes out                         3 passes
//   backward  reads g (+ host, seed for d_alpha); writes d_host, d_seed
//                                                                  3 or 5 passes
//   plus, for d_alpha, gridDim.x partial sums and one counter per sample.
// Layout of the work: a 2-D grid, blockIdx.y = sample (so no per-element
// division finds the sample), blockIdx.x strides over the sample's packed
// block in V-wide vectors (16 bytes when the block length and the pointers
// allow it). fp16/bf16 compute in fp32; 64-bit indices.
// d_alpha is deterministic and needs no second kernel: every block writes its
// partial sum, and the block that finishes a sample last (an integer counter,
// zero when the kernel starts) adds that sample's partials in index order.
// Which block comes last changes nothing in the result; no float atomics.
// That block also puts the counter back to zero, so the launcher can keep the
// counters from one launch to the next without a memset (stream_scratch.h).
#pragma once

#include "../numeric.h"
#include "block_reduce.cuh"

namespace kasmina {

constexpr int kBlendThreads = 256;
constexpr int kMaxGridY = 65535;

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <typename A>
__host__ __device__ __forceinline__ A clamp01(A a) {
  return a != a ? a : (a < A(0) ? A(0) : (a > A(1) ? A(1) : a));
}

// Like clamp's backward: outside [0, 1] the gradient is 0, even a NaN one.
template <typename A>
__host__ __device__ __forceinline__ A inside01(A a, A grad) {
  return (a >= A(0) && a <= A(1)) ? grad : A(0);
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

// The end of sample b's d_alpha in a backward kernel (blend's and valve's):
// every thread of the block calls it with its partial sum `acc` of the sample.
// With one block per sample, the block's sum is d_alpha[b]; with several, each
// block writes its partial and the block that finishes the sample last adds
// them in index order (deterministic), then puts the counter back to zero.
template <typename A>
__device__ __forceinline__ void finish_d_alpha(A acc, A a, int64_t b, A* shared, A* __restrict__ partial,
                                               unsigned* __restrict__ counter, A* __restrict__ d_alpha) {
  acc = block_sum(acc, shared);
  if (gridDim.x == 1) {
    if (threadIdx.x == 0) d_alpha[b] = inside01(a, acc);
    return;
  }
  if (threadIdx.x == 0) partial[b * gridDim.x + blockIdx.x] = acc;
  if (last_block_done(counter + b, gridDim.x)) {  // every partial of sample b is written: add them in order
    A sum = 0;
    for (int64_t p = threadIdx.x; p < gridDim.x; p += blockDim.x) sum += __ldcg(partial + b * gridDim.x + p);
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) d_alpha[b] = inside01(a, sum);
  }
}

// DA: compute d_alpha (host, seed, partial, counter and d_alpha are then
// non-null; partial holds B * gridDim.x values, counter B zeros, left at zero
// when the kernel ends). d_host or
// d_seed may be null when not asked for.
template <typename T, int V, bool DA>
__global__ void blend_backward_kernel(const T* __restrict__ grad, const T* __restrict__ host,
                                      const T* __restrict__ seed, T* __restrict__ d_host, T* __restrict__ d_seed,
                                      const typename Acc<T>::type* __restrict__ alpha, int64_t alpha_stride,
                                      typename Acc<T>::type* __restrict__ partial, unsigned* __restrict__ counter,
                                      typename Acc<T>::type* __restrict__ d_alpha, int64_t B, int64_t N) {
  using A = typename Acc<T>::type;
  using VT = Vec<T, V>;
  __shared__ A shared[32];
  const int64_t nvec = N / V;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const A a = alpha[b * alpha_stride];
    const A w = clamp01(a);
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
    if constexpr (DA) finish_d_alpha(acc, a, b, shared, partial, counter, d_alpha);
  }
}

// Grid: y = samples, x = enough blocks per sample to fill `sms` multiprocessors
// about 8 blocks deep, never more blocks than vectors to give them.
inline dim3 blend_grid(int64_t B, int64_t nvec, int64_t sms) {
  const int64_t gy = B < kMaxGridY ? (B > 0 ? B : 1) : kMaxGridY;
  const int64_t want = ceil_div(sms * 8, gy) > 1 ? ceil_div(sms * 8, gy) : 1;
  const int64_t have = ceil_div(nvec, kBlendThreads) > 1 ? ceil_div(nvec, kBlendThreads) : 1;
  return dim3(static_cast<unsigned>(want < have ? want : have), static_cast<unsigned>(gy));
}

}  // namespace kasmina
