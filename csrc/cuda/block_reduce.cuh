// Block-level helpers of the CUDA kernels' deterministic reductions.
//
// block_sum: a block-wide sum in a fixed order (warp shuffles, then the first
// warp): the same bits on every run, no atomics. `shared` holds 32 values of
// type A. The result is valid in thread 0.
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

// last_block_done: for reductions finished by whichever block ends last.
// Thread 0 of each of the `blocks` blocks that share `counter` (an integer,
// zero before the first of them calls this) has written its partial result;
// the call returns true, in every thread, in the block that counts last,
// which also puts the counter back to zero, ready for the next launch
// (stream_scratch.h). That block must then read the others' partials through
// L2 (__ldcg). Every thread of the block calls it.
__device__ __forceinline__ bool last_block_done(unsigned* counter, unsigned blocks) {
  __shared__ bool last;
  if (threadIdx.x == 0) {
    __threadfence();  // this block's partials are visible before the counter says so
    last = atomicAdd(counter, 1u) == blocks - 1;
    if (last) *counter = 0;  // every block has counted
  }
  __syncthreads();
  if (last) __threadfence();
  return last;
}

}  // namespace kasmina
