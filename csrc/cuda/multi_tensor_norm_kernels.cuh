// Device code of kasmina::foreach_norm and kasmina::gradient_stats on CUDA
// (the launcher is multi_tensor_norm.cu, the chunk table chunk_table.h;
// csrc/test/test_cuda_kernels.cpp runs these kernels on the CPU).
//
// Math: sumsq_i = sum(t_i^2) in fp64 (squares of large fp32 gradients would
// overflow fp32 and raise a false non-finite flag).
//   foreach_norm    out_i = fp32(sqrt(sumsq_i))
//   gradient_stats  norms_math.h on (sum of the host tensors' sumsq, same for the seed's)
// Work split: one block per chunk of the chunk table (a grid-stride loop when
// there are more chunks than blocks), 16-byte loads where the chunk is
// aligned, four in flight per thread; each block reduces its chunk in a fixed
// order into one fp64 partial. Then the partials are added in a fixed order:
// - foreach_norm: a second, small kernel, one block per tensor;
// - gradient_stats: inside the chunk kernel (of the last dtype group, when
//   the list mixes dtypes): every block counts itself done on an integer
//   counter, and the block that counts last adds the host slots and the seed
//   slots and writes the four stats, then puts the counter back to zero
//   (../stream_scratch.h). One launch per call for a one-dtype list.
// Bitwise deterministic: which block comes last changes nothing; no float
// atomics. Memory traffic: one read of every element, plus 8 bytes per chunk.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../norms_math.h"
#include "block_reduce.cuh"

namespace kasmina {

constexpr int kNormThreads = 256;
// 8192 elements a chunk (32 KB of fp32: 8 16-byte loads per thread). ResNet-50's
// 25.6M gradients make 3120 chunks: 3 to 4 waves on an H100 (6 to 8 resident
// 256-thread blocks per SM, by register use), so a partly empty last wave
// costs little; 16384-element chunks made 1.5 to 2 waves.
constexpr int64_t kNormChunk = 8192;
// 16-byte loads a thread issues at once (a full fp32 chunk is 8 per thread).
constexpr int kNormUnroll = 4;

// A 16-byte read-only load in the global address space (ld.global.nc). The
// chunk table holds plain addresses, from which the compiler can only emit
// generic loads. (Plain load where this code runs on the CPU, in the tests.)
template <typename Vec>
__device__ __forceinline__ Vec load_global_nc(const Vec* p) {
  static_assert(sizeof(Vec) == 16, "16-byte vectors only");
#ifdef __CUDA_ARCH__
  const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
  Vec v;
  memcpy(&v, &u, sizeof v);
  return v;
#else
  return *p;
#endif
}

// What the gradient_stats finalize needs (unused when STATS is false).
struct StatsArgs {
  unsigned* counter = nullptr;  // one counter, zero when the kernel starts, left at zero
  int64_t host_slots = 0, n_slots = 0, host_params = 0, seed_params = 0;
  float* out = nullptr;  // [host norm, seed norm, ratio, non-finite flag]
};

// The four stats from the partials: the host tensors own the slots
// [0, host_slots), the seed's [host_slots, n_slots) (chunk_table.h numbers
// slots in list order). Called by every thread of one block; reads through
// L2, since other blocks of the same launch wrote the partials.
__device__ __forceinline__ void stats_from_partials(const double* partial, const StatsArgs& a, double* shared) {
  double host = 0.0, seed = 0.0;
  for (int64_t k = threadIdx.x; k < a.host_slots; k += blockDim.x) host += __ldcg(partial + k);
  for (int64_t k = a.host_slots + threadIdx.x; k < a.n_slots; k += blockDim.x) seed += __ldcg(partial + k);
  host = block_sum(host, shared);
  seed = block_sum(seed, shared);
  if (threadIdx.x == 0) gradient_stats_from_sums(host, seed, a.host_params, a.seed_params, a.out);
}

// STATS: this launch also finalizes gradient_stats (its last block, see above).
// Every slot of `partial` must be written by this launch or an earlier one on
// the stream. With n_chunks == 0, one block only finalizes.
template <typename T, bool STATS = false>
__global__ void sumsq_chunks_kernel(const int64_t* __restrict__ table, int64_t n_chunks, double* __restrict__ partial,
                                    StatsArgs stats) {
  __shared__ double shared[32];
  constexpr int V = 16 / sizeof(T);
  struct alignas(16) Vec {
    T v[V];
  };
  for (int64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) {
    const T* p = reinterpret_cast<const T*>(table[c]) + table[n_chunks + c];
    const int64_t len = table[2 * n_chunks + c];
    double acc = 0.0;
    int64_t tail = 0;  // first element not read as a vector
    if (reinterpret_cast<uintptr_t>(p) % 16 == 0) {
      const int64_t nvec = len / V;
      const Vec* pv = reinterpret_cast<const Vec*>(p);
      auto add = [&acc](const Vec& x) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const double d = static_cast<double>(x.v[k]);
          acc += d * d;
        }
      };
      // kNormUnroll loads issued before the first is used: a warp keeps that
      // many 16-byte loads in flight instead of waiting for each one. The
      // sum runs over i, i + blockDim.x, ... in that order either way.
      int64_t i = threadIdx.x;
      const int64_t stride = blockDim.x;
      for (; i + (kNormUnroll - 1) * stride < nvec; i += kNormUnroll * stride) {
        Vec x[kNormUnroll];
#pragma unroll
        for (int u = 0; u < kNormUnroll; ++u) x[u] = load_global_nc(pv + i + u * stride);
#pragma unroll
        for (int u = 0; u < kNormUnroll; ++u) add(x[u]);
      }
      for (; i < nvec; i += stride) add(load_global_nc(pv + i));
      tail = nvec * V;
    }
    for (int64_t i = tail + threadIdx.x; i < len; i += blockDim.x) {
      const double d = static_cast<double>(p[i]);
      acc += d * d;
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) partial[table[3 * n_chunks + c]] = acc;
  }
  if constexpr (STATS) {
    if (last_block_done(stats.counter, gridDim.x)) stats_from_partials(partial, stats, shared);
  }
}

// out[i] = fp32(sqrt(sum of tensor i's partials [first_i, first_i + count_i))), in order.
__global__ void norms_finalize_kernel(const double* __restrict__ partial, const int64_t* __restrict__ first,
                                      const int64_t* __restrict__ count, float* __restrict__ out, int64_t n) {
  __shared__ double shared[32];
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    double acc = 0.0;
    for (int64_t k = threadIdx.x; k < count[i]; k += blockDim.x) acc += partial[first[i] + k];
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) out[i] = static_cast<float>(sqrt(acc));
  }
}

}  // namespace kasmina
