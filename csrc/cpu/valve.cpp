// kasmina::valve and kasmina::valve_backward on the CPU.
//
// Math (w = clamp(alpha, 0, 1), broadcast per sample or over the whole tensor;
// t = tanh(seed - host)):
//   forward   out     = host * (1 + w * t)
//   backward  d_seed  = g * host * w * (1 - t^2)
//             d_host  = g * (1 + w * t) - d_seed   (without "- d_seed" when isolate:
//                                                   the seed's input was detached)
//             d_alpha = [0 <= alpha <= 1] * sum_{sample} g * host * t
// Memory traffic on the dense path (packed contiguous / channels_last layouts):
//   forward   reads host, seed; writes out                       (3 passes)
//   backward  reads g, host, seed; writes d_host, d_seed         (5 passes)
// Outputs of 8 MB and more are written with streaming stores (stream.h).
// tanh: fast_tanh.h (fp32, vectorized, ~2 ulp). bf16/fp16 compute in fp32; the d_alpha reduction is a fixed-order two-stage
// sum (fp32 per chunk, fp64 across chunks): bitwise deterministic. Other
// strided inputs take an ATen fallback (valve_fallback.cpp).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdlib>
#include <vector>

#include "../checks.h"
#include "dense.h"
#include "fast_tanh.h"
#include "stream.h"

namespace kasmina {
namespace {

using cpu::Acc;
using cpu::kChunk;

#define KASMINA_VALVE_NS base
#include "valve_loops.h"  // NOLINT(build/include)
#undef KASMINA_VALVE_NS

#if defined(__GNUC__) && defined(__x86_64__)
#define KASMINA_VALVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define KASMINA_VALVE_NS avx2
#include "valve_loops.h"  // NOLINT(build/include)
#undef KASMINA_VALVE_NS
#pragma GCC pop_options
#else
#define KASMINA_VALVE_AVX2 0
#endif

// The AVX2 + FMA loops where the CPU has them, else the baseline's (checked once;
// KASMINA_FAST_CPU_BASELINE=1 forces the baseline: how the tests reach it on an AVX2 CPU).
bool use_avx2() {
#if KASMINA_VALVE_AVX2
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          std::getenv("KASMINA_FAST_CPU_BASELINE") == nullptr;
  return yes;
#else
  return false;
#endif
}

}  // namespace

at::Tensor valve_cpu(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha, bool isolate) {
  check_blend_args(host, seed, alpha, "kasmina::valve");
  at::Tensor out = at::empty_like(host);
  const Blocks blk = dense_blocks(host, alpha.dim() > 0, {&seed, &out});
  if (!blk.dense) return valve_fallback(host, seed, alpha, out);
  if (host.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, host.scalar_type(), "kasmina_valve_cpu", [&] {
    using A = typename Acc<scalar_t>::type;
    std::vector<A> w(blk.B);
    cpu::read_alpha<A>(alpha, blk.B, w.data(), nullptr);
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const scalar_t* h = host.const_data_ptr<scalar_t>();
    const scalar_t* s = seed.const_data_ptr<scalar_t>();
    const bool stream = cpu::use_stream(out.nbytes(), {o});
#if KASMINA_VALVE_AVX2
    if (use_avx2()) {
      avx2::valve_forward(stream, h, s, o, w, blk.B, blk.N);
    } else {
      base::valve_forward(stream, h, s, o, w, blk.B, blk.N);
    }
#else
    base::valve_forward(stream, h, s, o, w, blk.B, blk.N);
#endif
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> valve_backward_cpu(const at::Tensor& grad, const at::Tensor& host,
                                                                  const at::Tensor& seed, const at::Tensor& alpha,
                                                                  bool isolate, std::array<bool, 3> mask) {
  const BackwardPlan plan = plan_valve_backward(grad, host, seed, alpha, isolate, mask);
  if (plan.done) return plan.outputs();
  const Blocks& blk = plan.blocks;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, host.scalar_type(), "kasmina_valve_backward_cpu", [&] {
    using A = typename Acc<scalar_t>::type;
    const int64_t B = blk.B, N = blk.N, per = ceil_div(N, kChunk);
    std::vector<A> w(B), inside(B);
    cpu::read_alpha<A>(alpha, B, w.data(), inside.data());
    std::vector<double> partial(mask[2] ? B * per : 0);
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* h = host.const_data_ptr<scalar_t>();
    const scalar_t* s = seed.const_data_ptr<scalar_t>();
    scalar_t* dh = mask[0] ? plan.d_host.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* ds = mask[1] ? plan.d_seed.mutable_data_ptr<scalar_t>() : nullptr;
    double* pp = mask[2] ? partial.data() : nullptr;
    const bool stream = cpu::use_stream(grad.nbytes(), {dh, ds});
#if KASMINA_VALVE_AVX2
    if (use_avx2()) {
      avx2::valve_backward(stream, g, h, s, dh, ds, pp, isolate, w, B, N);
    } else {
      base::valve_backward(stream, g, h, s, dh, ds, pp, isolate, w, B, N);
    }
#else
    base::valve_backward(stream, g, h, s, dh, ds, pp, isolate, w, B, N);
#endif
    if (mask[2]) cpu::finish_d_alpha(plan.d_alpha, partial, inside.data(), B, per);
  });
  return plan.outputs();
}

}  // namespace kasmina
