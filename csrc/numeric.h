// Small numeric helpers shared by the CPU kernels, the CUDA kernels and their
// CPU emulation (no ATen here, so device-only headers can include it).
#pragma once

#include <cstdint>

namespace kasmina {

inline constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Accumulation type of the kernels: fp32, fp64 for fp64.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

}  // namespace kasmina
