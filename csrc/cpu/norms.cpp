// kasmina::foreach_norm and kasmina::gradient_stats on the CPU.
//
// Math: per tensor t_i, sumsq_i = sum(t_i^2) (fp32 over 512-element blocks,
// fp64 across blocks and for fp64 inputs); foreach_norm returns
// sqrt(sumsq_i) as fp32 [N]. gradient_stats returns fp32 [4]:
//   host = sqrt(sum over host_grads), seed = sqrt(sum over seed_grads),
//   ratio = 0 if host < 1e-8, else min(10, seed / host * sqrt(host_params / seed_params))
//           (the raw seed / host when either count is 0; NaN stays NaN),
//   nonfinite = 1 if host or seed sum of squares is not finite, else 0.
// Memory traffic: one read of every element; the work is split into
// fixed-size chunks over all tensors (parallel over tensors and chunks) and
// the chunk partials are added in a fixed order: bitwise deterministic.
// Dense tensors of any layout are read in place; other strided views go
// through at::linalg_vector_norm (correct, no copy, slower).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../norms_math.h"
#include "dense.h"

namespace kasmina {
namespace {

constexpr int64_t kNormChunk = 4 * cpu::kChunk;

struct Task {
  int64_t tensor;
  int64_t lo, hi;
};

template <typename T>
double sumsq_range_fp64(const T* p, int64_t lo, int64_t hi) {
  double acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = lo; i < hi; ++i) {
    const double v = static_cast<double>(p[i]);
    acc += v * v;
  }
  return acc;
}

// fp32 squares summed over short blocks (twice the SIMD width of fp64), each
// block added to an fp64 total. A block whose fp32 sum is not finite is
// summed again in fp64: a true NaN/inf stays so, while squares that merely
// overflow fp32 (|x| > 1.8e19) do not raise a false non-finite flag.
template <typename T>
double sumsq_range(const T* p, int64_t lo, int64_t hi) {
  if constexpr (std::is_same_v<T, double>) {
    return sumsq_range_fp64(p, lo, hi);
  } else {
    constexpr int64_t kBlock = 512;
    double total = 0;
    for (int64_t b = lo; b < hi; b += kBlock) {
      const int64_t e = std::min(hi, b + kBlock);
      float acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = b; i < e; ++i) {
        const float v = static_cast<float>(p[i]);
        acc += v * v;
      }
      total += std::isfinite(acc) ? static_cast<double>(acc) : sumsq_range_fp64(p, b, e);
    }
    return total;
  }
}

// Sum of squares of every tensor of `a` then `b` (read in place, no list
// copy), in fp64.
std::vector<double> sums_of_squares(at::TensorList a, at::TensorList b = {}) {
  const int64_t na = static_cast<int64_t>(a.size());
  const int64_t n = na + static_cast<int64_t>(b.size());
  auto tensor = [&](int64_t i) -> const at::Tensor& { return i < na ? a[i] : b[i - na]; };
  std::vector<double> out(n, 0.0);
  std::vector<Task> tasks;
  int64_t elems = 0;  // in the tasks
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& t = tensor(i);
    const int64_t numel = t.numel();
    if (numel == 0) continue;
    if (!t.is_non_overlapping_and_dense()) {
      const double norm = at::linalg_vector_norm(t, 2, c10::nullopt, false, at::kDouble).item<double>();
      out[i] = norm * norm;
      continue;
    }
    for (int64_t lo = 0; lo < numel; lo += kNormChunk) tasks.push_back({i, lo, std::min(lo + kNormChunk, numel)});
    elems += numel;
  }
  std::vector<double> partial(tasks.size(), 0.0);
  const int64_t n_tasks = static_cast<int64_t>(tasks.size());
  // a task also costs about as much as 256 elements (the dtype dispatch, the tensor's fields)
  const int64_t grain = cpu::task_grain(n_tasks > 0 ? elems / n_tasks + 256 : 0);
  at::parallel_for(0, n_tasks, grain, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const Task& tk = tasks[k];
      const at::Tensor& t = tensor(tk.tensor);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "kasmina_sumsq_cpu", [&] {
        partial[k] = sumsq_range(t.const_data_ptr<scalar_t>(), tk.lo, tk.hi);
      });
    }
  });
  for (size_t k = 0; k < tasks.size(); ++k) out[tasks[k].tensor] += partial[k];
  return out;
}

}  // namespace

at::Tensor foreach_norm_cpu(at::TensorList tensors) {
  check_foreach_norm_args(tensors);
  const std::vector<double> ss = sums_of_squares(tensors);
  at::Tensor out = at::empty({static_cast<int64_t>(ss.size())}, at::TensorOptions().dtype(at::kFloat));
  float* o = out.mutable_data_ptr<float>();
  for (size_t i = 0; i < ss.size(); ++i) o[i] = static_cast<float>(std::sqrt(ss[i]));
  return out;
}

at::Tensor gradient_stats_cpu(at::TensorList host_grads, at::TensorList seed_grads, int64_t host_params,
                              int64_t seed_params) {
  check_gradient_stats_args(host_grads, seed_grads, host_params, seed_params);
  const std::vector<double> ss = sums_of_squares(host_grads, seed_grads);
  double host_ss = 0, seed_ss = 0;
  for (size_t i = 0; i < ss.size(); ++i) (i < host_grads.size() ? host_ss : seed_ss) += ss[i];
  at::Tensor out = at::empty({4}, at::TensorOptions().dtype(at::kFloat));
  gradient_stats_from_sums(host_ss, seed_ss, host_params, seed_params, out.mutable_data_ptr<float>());
  return out;
}

}  // namespace kasmina
