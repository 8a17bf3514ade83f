// The gradient_stats formula, shared by the CPU and CUDA kernels (host and device).
//
//   host = sqrt(host_ss), seed = sqrt(seed_ss),
//   ratio = 0 if host < 1e-8, else min(10, seed / host * sqrt(host_params / seed_params))
//           (the raw seed / host when either count is 0; NaN stays NaN),
//   nonfinite = 1 if host_ss + seed_ss is not finite, else 0.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define KASMINA_HD __host__ __device__
#else
#define KASMINA_HD
#endif

namespace kasmina {

KASMINA_HD inline void gradient_stats_from_sums(double host_ss, double seed_ss, int64_t host_params,
                                                int64_t seed_params, float* out) {
  const double host = std::sqrt(host_ss);
  const double seed = std::sqrt(seed_ss);
  double ratio = 0.0;
  if (!(host < 1e-8)) {
    ratio = seed / host;
    if (host_params > 0 && seed_params > 0) {
      ratio *= std::sqrt(static_cast<double>(host_params) / static_cast<double>(seed_params));
    }
    if (!std::isnan(ratio)) ratio = ratio < 10.0 ? ratio : 10.0;
  }
  out[0] = static_cast<float>(host);
  out[1] = static_cast<float>(seed);
  out[2] = static_cast<float>(ratio);
  out[3] = std::isfinite(host_ss + seed_ss) ? 0.0f : 1.0f;
}

}  // namespace kasmina
