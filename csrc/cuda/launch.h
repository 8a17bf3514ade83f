// Host-side launch helpers of the pointwise CUDA kernels (blend.cu, valve.cu).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <initializer_list>

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

}  // namespace kasmina
