// Helpers for the CPU kernels: accumulation types and the "dense blocks" view.
//
// A tensor that is non-overlapping and dense (contiguous, channels_last, or
// any other permutation of a packed layout) occupies numel consecutive
// elements starting at data_ptr(). When its batch dimension is outermost in
// memory (true for contiguous and channels_last), every sample is one packed
// block of numel / B elements. The kernels walk that storage linearly, so
// neither layout is ever copied.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <initializer_list>

namespace kasmina::cpu {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

// Elements per parallel task. Fixed (never derived from the thread count), so
// reductions over tasks add the same partial sums in the same order on every
// run and every machine: results are bitwise deterministic.
constexpr int64_t kChunk = 16384;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Blocks {
  bool dense = false;  // false: use the strided fallback
  int64_t B = 1;       // number of blocks (1 for a 0-d alpha)
  int64_t N = 0;       // elements per block
};

// `ref` decides the layout; each of `others` must share its strides exactly.
// per_sample: blocks are samples along dim 0, which must be outermost in memory.
inline Blocks dense_blocks(const at::Tensor& ref, bool per_sample,
                           std::initializer_list<const at::Tensor*> others) {
  Blocks b;
  const int64_t n = ref.numel();
  b.B = per_sample ? ref.size(0) : 1;
  b.N = b.B > 0 ? n / b.B : 0;
  if (n == 0) {
    b.dense = true;
    return b;
  }
  if (!ref.is_non_overlapping_and_dense()) return b;
  for (const at::Tensor* t : others) {
    if (t->strides() != ref.strides()) return b;
  }
  if (per_sample && b.B > 1 && ref.stride(0) != b.N) return b;
  b.dense = true;
  return b;
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

}  // namespace kasmina::cpu
