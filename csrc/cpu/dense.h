// Helpers for the CPU kernels: accumulation types, task size, alpha reading.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../layout.h"
#include "stream.h"

namespace kasmina::cpu {

using kasmina::Acc;

// Elements per parallel task. Fixed (never derived from the thread count), so
// reductions over tasks add the same partial sums in the same order on every
// run and every machine: results are bitwise deterministic.
constexpr int64_t kChunk = 16384;

// Elements a thread should get at least (ATen's GRAIN_SIZE): less work than
// that runs on the calling thread, since an OpenMP fork and join costs
// microseconds, more than a small op's whole kernel.
constexpr int64_t kMinParallel = 32768;

// The at::parallel_for grain for tasks of `task_elems` elements (on average).
// Only the assignment of tasks to threads depends on it, never the tasks, so
// results stay bitwise the same.
inline int64_t task_grain(int64_t task_elems) {
  return std::max<int64_t>(1, kMinParallel / std::max<int64_t>(1, task_elems));
}

// f(t, b, lo, hi) for every fixed task t: the elements [lo, hi) of sample b, at
// most kChunk of them, tasks spread over threads by at::parallel_for with
// `grain`; with STREAM each thread fences its streaming stores at the end.
template <bool STREAM, typename F>
void for_each_chunk(int64_t B, int64_t N, int64_t grain, const F& f) {
  const int64_t per = ceil_div(N, kChunk);
  at::parallel_for(0, B * per, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / per;
      const int64_t lo = b * N + (t % per) * kChunk;
      f(t, b, lo, std::min(lo + kChunk, b * N + N));
    }
    if constexpr (STREAM) stream_fence();
  });
}

// The clamped per-block weights w[b] = clamp(alpha[b], 0, 1) (NaN stays NaN,
// as in torch.clamp) and the clamp's gradient mask (1 inside [0, 1]).
template <typename A>
void read_alpha(const at::Tensor& alpha, int64_t B, A* w, A* mask) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, alpha.scalar_type(), "kasmina_read_alpha", [&] {
    const scalar_t* p = alpha.const_data_ptr<scalar_t>();
    const int64_t step = alpha.dim() == 0 ? 0 : alpha.stride(0);
    for (int64_t i = 0; i < B; ++i) {
      const A a = static_cast<A>(p[i * step]);
      w[i] = std::min(std::max(a, A(0)), A(1));
      if (a != a) w[i] = a;  // std::max/min may drop a NaN depending on order
      if (mask) mask[i] = (a >= A(0) && a <= A(1)) ? A(1) : A(0);
    }
  });
}

// d_alpha[b] = inside[b] ? sum_c partial[b * per + c] : 0, the sum in fp64 in
// task order (deterministic), into d_alpha's own dtype. Like clamp's backward:
// outside [0, 1] the gradient is 0, even a NaN one.
template <typename A>
void finish_d_alpha(const at::Tensor& d_alpha, const std::vector<double>& partial, const A* inside, int64_t B,
                    int64_t per) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d_alpha.scalar_type(), "kasmina_d_alpha", [&] {
    scalar_t* da = d_alpha.mutable_data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      double sum = 0;
      for (int64_t c = 0; c < per; ++c) sum += partial[b * per + c];
      da[b] = static_cast<scalar_t>(inside[b] != 0 ? sum : 0.0);
    }
  });
}

}  // namespace kasmina::cpu
