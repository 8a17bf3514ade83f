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
#include <vector>

#include "../checks.h"
#include "dense.h"
#include "fast_tanh.h"
#include "stream.h"

namespace kasmina {
namespace {

using cpu::Acc;
using cpu::kChunk;
using cpu::kLine;
using cpu::write_range;

template <typename T, bool STREAM>
void valve_forward_dense(const T* h, const T* s, T* o, const std::vector<typename Acc<T>::type>& w, int64_t B,
                         int64_t N) {
  using A = typename Acc<T>::type;
  const int64_t per = ceil_div(N, kChunk);
  at::parallel_for(0, B * per, cpu::task_grain(std::min(N, kChunk) / 4), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / per;
      const int64_t lo = b * N + (t % per) * kChunk;
      const int64_t hi = std::min(lo + kChunk, b * N + N);
      const A wb = w[b];
      write_range<STREAM>(o, lo, hi, [&](int64_t i) {
        const A hv = static_cast<A>(h[i]);
        return static_cast<T>(hv * (A(1) + wb * cpu::tanh_fast(static_cast<A>(s[i]) - hv)));
      });
    }
    if constexpr (STREAM) cpu::stream_fence();
  });
}

// One pass over g, host and seed: writes d_host (DH) and d_seed (DS) and, with
// `partial`, one partial d_alpha sum per task. (Both flags are template
// arguments: a store under a run-time test would keep the loop from vectorizing.)
template <typename T, bool DH, bool DS, bool STREAM>
void valve_backward_dense(const T* g, const T* h, const T* s, T* dh, T* ds, double* partial, bool isolate,
                          const std::vector<typename Acc<T>::type>& w, int64_t B, int64_t N) {
  using A = typename Acc<T>::type;
  constexpr int64_t L = kLine / sizeof(T);
  const int64_t per = ceil_div(N, kChunk);
  // (a tanh and five arrays an element: worth threads at a few thousand elements)
  at::parallel_for(0, B * per, cpu::task_grain(std::min(N, kChunk) / 4), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / per;
      const int64_t lo = b * N + (t % per) * kChunk;
      const int64_t hi = std::min(lo + kChunk, b * N + N);
      const A wb = w[b];
      const A keep = isolate ? A(0) : A(1);  // d_host = g (1 + w t) - keep * d_seed
      // over [i0, i1) into odh/ods at i - shift (line buffers when streaming);
      // returns the partial d_alpha sum of the range
      auto run = [&](int64_t i0, int64_t i1, T* odh, T* ods, int64_t shift) -> A {
        A sum = 0;
        for (int64_t i = i0; i < i1; ++i) {
          const A gv = static_cast<A>(g[i]);
          const A hv = static_cast<A>(h[i]);
          const A tv = cpu::tanh_fast(static_cast<A>(s[i]) - hv);
          const A gh = gv * hv;
          const A q = gh * wb * (A(1) - tv * tv);
          if constexpr (DH) odh[i - shift] = static_cast<T>(gv * (A(1) + wb * tv) - keep * q);
          if constexpr (DS) ods[i - shift] = static_cast<T>(q);
          sum += gh * tv;
        }
        return sum;
      };
      A acc = 0;
      if constexpr (STREAM) {
        int64_t i = std::min(hi, (lo + L - 1) / L * L);
        acc += run(lo, i, dh, ds, 0);
        for (; i + L <= hi; i += L) {
          alignas(64) T bh[L];
          alignas(64) T bs[L];
          acc += run(i, i + L, bh, bs, i);
          if constexpr (DH) cpu::stream_line(dh + i, bh);
          if constexpr (DS) cpu::stream_line(ds + i, bs);
        }
        acc += run(i, hi, dh, ds, 0);
      } else {
        acc = run(lo, hi, dh, ds, 0);
      }
      if (partial) partial[t] = static_cast<double>(acc);
    }
    if constexpr (STREAM) cpu::stream_fence();
  });
}

template <typename T, bool DH, bool DS>
void valve_backward_stream(bool stream, const T* g, const T* h, const T* s, T* dh, T* ds, double* partial,
                           bool isolate, const std::vector<typename Acc<T>::type>& w, int64_t B, int64_t N) {
  if (stream) {
    valve_backward_dense<T, DH, DS, true>(g, h, s, dh, ds, partial, isolate, w, B, N);
  } else {
    valve_backward_dense<T, DH, DS, false>(g, h, s, dh, ds, partial, isolate, w, B, N);
  }
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
    if (cpu::use_stream(out.nbytes(), {o})) {
      valve_forward_dense<scalar_t, true>(h, s, o, w, blk.B, blk.N);
    } else {
      valve_forward_dense<scalar_t, false>(h, s, o, w, blk.B, blk.N);
    }
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
    if (dh && ds) {
      valve_backward_stream<scalar_t, true, true>(stream, g, h, s, dh, ds, pp, isolate, w, B, N);
    } else if (dh) {
      valve_backward_stream<scalar_t, true, false>(stream, g, h, s, dh, ds, pp, isolate, w, B, N);
    } else if (ds) {
      valve_backward_stream<scalar_t, false, true>(stream, g, h, s, dh, ds, pp, isolate, w, B, N);
    } else {
      valve_backward_stream<scalar_t, false, false>(stream, g, h, s, dh, ds, pp, isolate, w, B, N);
    }
    if (mask[2]) cpu::finish_d_alpha(plan.d_alpha, partial, inside.data(), B, per);
  });
  return plan.outputs();
}

}  // namespace kasmina
