// The "dense blocks" view of a tensor, shared by the CPU and CUDA kernels.
//
// A tensor that is non-overlapping and dense (contiguous, channels_last, or
// any other permutation of a packed layout) occupies numel consecutive
// elements starting at data_ptr(). When its batch dimension is outermost in
// memory (true for contiguous and channels_last), every sample is one packed
// block of numel / B elements. The kernels walk that storage linearly, so
// neither layout is ever copied; anything else takes the strided fallback.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <initializer_list>
#include <tuple>

#include "numeric.h"

namespace kasmina {

struct Blocks {
  bool dense = false;  // false: use the strided fallback
  int64_t B = 1;       // number of blocks (1 for a 0-d alpha)
  int64_t N = 0;       // elements per block
};

// `ref` decides the layout; each of `others` must share its strides exactly.
// per_sample: blocks are samples along dim 0, which must be outermost in memory.
inline Blocks dense_blocks(const at::Tensor& ref, bool per_sample, std::initializer_list<const at::Tensor*> others) {
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

// The backward's dense view. Blend's d_host/d_seed need only g (and share its
// layout), host and seed are read only for d_alpha; valve reads host and seed
// for every output (`reads_inputs`).
inline Blocks backward_blocks(const at::Tensor& grad, const at::Tensor& host, const at::Tensor& seed,
                              const at::Tensor& d_host, const at::Tensor& d_seed, bool per_sample,
                              std::array<bool, 3> mask, bool reads_inputs) {
  Blocks blk = dense_blocks(host, per_sample, {&grad});
  if (!blk.dense || host.numel() == 0) return blk;
  if (mask[0] && d_host.strides() != host.strides()) blk.dense = false;
  if (mask[1] && d_seed.strides() != host.strides()) blk.dense = false;
  if ((mask[2] || reads_inputs) && seed.strides() != host.strides()) blk.dense = false;
  return blk;
}

// The dtype the blend kernels compute in: fp64 for fp64, else fp32.
inline at::ScalarType acc_dtype(const at::Tensor& host) {
  return host.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// alpha in that dtype (no copy when it already is), as the kernels read it.
inline at::Tensor alpha_acc(const at::Tensor& alpha, const at::Tensor& host) { return alpha.to(acc_dtype(host)); }

// Strided fallbacks of blend, valve and their backwards (ATen ops, correct for
// any layout, several passes), in fp32 (fp64 for fp64) like the dense kernels.
// The backwards fill the outputs `mask` asks for.
at::Tensor blend_fallback(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha, at::Tensor out);
void blend_backward_fallback(const at::Tensor& grad, const at::Tensor& host, const at::Tensor& seed,
                             const at::Tensor& alpha, std::array<bool, 3> mask, at::Tensor& d_host, at::Tensor& d_seed,
                             at::Tensor& d_alpha);
at::Tensor valve_fallback(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha, at::Tensor out);
void valve_backward_fallback(const at::Tensor& grad, const at::Tensor& host, const at::Tensor& seed,
                             const at::Tensor& alpha, bool isolate, std::array<bool, 3> mask, at::Tensor& d_host,
                             at::Tensor& d_seed, at::Tensor& d_alpha);
// d_alpha of a strided backward: [0 <= alpha <= 1] * sum(prod) over alpha's
// broadcast dims (prod: the per-element term, g (seed - host) or g host t).
void fallback_d_alpha(const at::Tensor& prod, const at::Tensor& alpha, at::Tensor& d_alpha);

// What every blend_backward / valve_backward kernel does first: check the
// arguments, allocate the outputs (the ones not asked for are empty [0]
// tensors), and finish the job right away when the dense kernels have nothing
// to do (strided layouts go to the op's fallback, empty tensors give a zero
// d_alpha). `done` says so.
struct BackwardPlan {
  at::Tensor d_host, d_seed, d_alpha;
  Blocks blocks;
  bool done = false;
  std::tuple<at::Tensor, at::Tensor, at::Tensor> outputs() const { return {d_host, d_seed, d_alpha}; }
};
BackwardPlan plan_blend_backward(const at::Tensor& grad, const at::Tensor& host, const at::Tensor& seed,
                                 const at::Tensor& alpha, std::array<bool, 3> mask);
BackwardPlan plan_valve_backward(const at::Tensor& grad, const at::Tensor& host, const at::Tensor& seed,
                                 const at::Tensor& alpha, bool isolate, std::array<bool, 3> mask);

}  // namespace kasmina
