// Block-wide sum in a fixed order (warp shuffles, then the first warp): the
// same bits on every run, no atomics. `shared` holds 32 values of type A.
// The result is valid in thread 0.
#pragma once

namespace kasmina {

template <typename A>
__device__ __forceinline__ A block_sum(A v, A* shared) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / 32) ? shared[lane] : A(0);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  }
  return v;
}

}  // namespace kasmina
