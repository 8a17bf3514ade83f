// kasmina::blend and kasmina::blend_backward on the CPU.
//
// Math (w = clamp(alpha, 0, 1), broadcast per sample or over the whole tensor):
//   forward   out     = lerp(host, seed, w)      (torch.lerp's two-sided formula)
//   backward  d_host  = (1 - w) * g
//             d_seed  = w * g
//             d_alpha = [0 <= alpha <= 1] * sum_{sample} g * (seed - host)
// Memory traffic on the dense path (packed contiguous / channels_last layouts):
//   forward   reads host, seed; writes out                       (3 passes)
//   backward  reads g (and host, seed only when d_alpha is wanted);
//             writes d_host, d_seed                              (3 or 5 passes)
// Outputs of 8 MB and more are written with streaming stores (stream.h).
// bf16/fp16 compute in fp32; the d_alpha reduction is a fixed-order two-stage
// sum (fp32 per chunk, fp64 across chunks): bitwise deterministic.
// Other strided inputs take an ATen fallback (correct, several passes).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../checks.h"
#include "dense.h"
#include "stream.h"

namespace kasmina {
namespace {

using cpu::Acc;
using cpu::kChunk;

template <typename T, bool STREAM>
void blend_forward_dense(const T* h, const T* s, T* o, const std::vector<typename Acc<T>::type>& w, int64_t B,
                         int64_t N) {
  using A = typename Acc<T>::type;
  cpu::for_each_chunk<STREAM>(B, N, cpu::task_grain(std::min(N, kChunk)), [&](int64_t, int64_t b, int64_t lo,
                                                                              int64_t hi) {
    const A wb = w[b];
    const A omw = A(1) - wb;
    const bool low = wb < A(0.5);  // torch.lerp's two-sided formula
    cpu::over_lines<STREAM, true, false>(lo, hi, o, o, [&](int64_t i0, int64_t i1, T* out, T*, int64_t shift) {
      if (low) {
        for (int64_t i = i0; i < i1; ++i) {
          const A hv = static_cast<A>(h[i]);
          out[i - shift] = static_cast<T>(hv + wb * (static_cast<A>(s[i]) - hv));
        }
      } else {
        for (int64_t i = i0; i < i1; ++i) {
          const A sv = static_cast<A>(s[i]);
          out[i - shift] = static_cast<T>(sv - (sv - static_cast<A>(h[i])) * omw);
        }
      }
      return 0;
    });
  });
}

// One pass over g (and host, seed when DA): writes d_host, d_seed and one
// partial d_alpha sum per task.
template <typename T, bool DH, bool DS, bool DA, bool STREAM>
void blend_backward_dense(const T* g, const T* h, const T* s, T* dh, T* ds, double* partial,
                          const std::vector<typename Acc<T>::type>& w, int64_t B, int64_t N) {
  using A = typename Acc<T>::type;
  // (five arrays an element against the forward's three: worth threads at half the size)
  cpu::for_each_chunk<STREAM>(B, N, cpu::task_grain(2 * std::min(N, kChunk)), [&](int64_t t, int64_t b, int64_t lo,
                                                                                  int64_t hi) {
    const A wb = w[b];
    const A omw = A(1) - wb;
    const A acc = cpu::over_lines<STREAM, DH, DS>(lo, hi, dh, ds, [&](int64_t i0, int64_t i1, T* odh, T* ods,
                                                                        int64_t shift) {
      A sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = i0; i < i1; ++i) {
        const A gv = static_cast<A>(g[i]);
        if constexpr (DH) odh[i - shift] = static_cast<T>(gv * omw);
        if constexpr (DS) ods[i - shift] = static_cast<T>(gv * wb);
        if constexpr (DA) sum += gv * (static_cast<A>(s[i]) - static_cast<A>(h[i]));
      }
      return sum;
    });
    if constexpr (DA) partial[t] = static_cast<double>(acc);
  });
}

template <typename T, bool DH, bool DS>
void backward_da(bool da, bool stream, const T* g, const T* h, const T* s, T* dh, T* ds, double* partial,
                 const std::vector<typename Acc<T>::type>& w, int64_t B, int64_t N) {
  if (da && stream) {
    blend_backward_dense<T, DH, DS, true, true>(g, h, s, dh, ds, partial, w, B, N);
  } else if (da) {
    blend_backward_dense<T, DH, DS, true, false>(g, h, s, dh, ds, partial, w, B, N);
  } else if (stream) {
    blend_backward_dense<T, DH, DS, false, true>(g, h, s, dh, ds, partial, w, B, N);
  } else {
    blend_backward_dense<T, DH, DS, false, false>(g, h, s, dh, ds, partial, w, B, N);
  }
}

}  // namespace

at::Tensor blend_cpu(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha) {
  check_blend_args(host, seed, alpha, "kasmina::blend");
  at::Tensor out = at::empty_like(host);
  const bool per_sample = alpha.dim() > 0;
  const Blocks blk = dense_blocks(host, per_sample, {&seed, &out});
  if (!blk.dense) return blend_fallback(host, seed, alpha, out);
  if (host.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, host.scalar_type(), "kasmina_blend_cpu", [&] {
    using A = typename Acc<scalar_t>::type;
    std::vector<A> w(blk.B);
    cpu::read_alpha<A>(alpha, blk.B, w.data(), nullptr);
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const scalar_t* h = host.const_data_ptr<scalar_t>();
    const scalar_t* s = seed.const_data_ptr<scalar_t>();
    if (cpu::use_stream(out.nbytes(), {o})) {
      blend_forward_dense<scalar_t, true>(h, s, o, w, blk.B, blk.N);
    } else {
      blend_forward_dense<scalar_t, false>(h, s, o, w, blk.B, blk.N);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> blend_backward_cpu(const at::Tensor& grad, const at::Tensor& host,
                                                                  const at::Tensor& seed, const at::Tensor& alpha,
                                                                  std::array<bool, 3> mask) {
  const BackwardPlan plan = plan_blend_backward(grad, host, seed, alpha, mask);
  if (plan.done) return plan.outputs();
  const Blocks& blk = plan.blocks;
  const at::Tensor &d_host = plan.d_host, &d_seed = plan.d_seed, &d_alpha = plan.d_alpha;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, host.scalar_type(), "kasmina_blend_backward_cpu", [&] {
    using A = typename Acc<scalar_t>::type;
    const int64_t B = blk.B, N = blk.N, per = ceil_div(N, kChunk);
    std::vector<A> w(B), inside(B);
    cpu::read_alpha<A>(alpha, B, w.data(), inside.data());
    std::vector<double> partial(mask[2] ? B * per : 0);
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* h = mask[2] ? host.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* s = mask[2] ? seed.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* dh = mask[0] ? d_host.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* ds = mask[1] ? d_seed.mutable_data_ptr<scalar_t>() : nullptr;
    const bool stream = cpu::use_stream(grad.nbytes(), {dh, ds});
    if (mask[0] && mask[1]) {
      backward_da<scalar_t, true, true>(mask[2], stream, g, h, s, dh, ds, partial.data(), w, B, N);
    } else if (mask[0]) {
      backward_da<scalar_t, true, false>(mask[2], stream, g, h, s, dh, ds, partial.data(), w, B, N);
    } else if (mask[1]) {
      backward_da<scalar_t, false, true>(mask[2], stream, g, h, s, dh, ds, partial.data(), w, B, N);
    } else {
      backward_da<scalar_t, false, false>(true, stream, g, h, s, dh, ds, partial.data(), w, B, N);
    }
    if (mask[2]) cpu::finish_d_alpha(d_alpha, partial, inside.data(), B, per);
  });
  return plan.outputs();
}

}  // namespace kasmina
