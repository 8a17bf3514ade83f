// The loops of kasmina::valve's CPU kernels (csrc/cpu/valve.cpp includes this
// file twice: for the baseline target and, on x86, under a target pragma for
// AVX2 + FMA, each time in its own namespace KASMINA_VALVE_NS). No include guard
// on purpose. Every function here must be defined in this file (or be inline and
// target-neutral, like tanh_fast): a callee compiled for the baseline cannot
// inline an AVX2 lambda, and the loops would no longer vectorize.
// NOLINTBEGIN(build/include_guard)
namespace KASMINA_VALVE_NS {

using cpu::Acc;
using cpu::kChunk;
using cpu::kLine;

template <typename T, bool STREAM>
void valve_forward_dense(const T* h, const T* s, T* o, const std::vector<typename Acc<T>::type>& w, int64_t B,
                         int64_t N) {
  using A = typename Acc<T>::type;
  constexpr int64_t L = kLine / sizeof(T);
  const int64_t per = ceil_div(N, kChunk);
  at::parallel_for(0, B * per, cpu::task_grain(std::min(N, kChunk) / 4), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / per;
      const int64_t lo = b * N + (t % per) * kChunk;
      const int64_t hi = std::min(lo + kChunk, b * N + N);
      const A wb = w[b];
      // over [i0, i1) into out at i - shift (a line buffer when streaming)
      auto run = [&](int64_t i0, int64_t i1, T* out, int64_t shift) {
        for (int64_t i = i0; i < i1; ++i) {
          const A hv = static_cast<A>(h[i]);
          out[i - shift] = static_cast<T>(hv * (A(1) + wb * cpu::tanh_fast(static_cast<A>(s[i]) - hv)));
        }
      };
      if constexpr (STREAM) {
        int64_t i = std::min(hi, (lo + L - 1) / L * L);
        run(lo, i, o, 0);
        for (; i + L <= hi; i += L) {
          alignas(64) T line[L];
          run(i, i + L, line, i);
          cpu::stream_line(o + i, line);
        }
        run(i, hi, o, 0);
      } else {
        run(lo, hi, o, 0);
      }
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

// The entry points: the forward, and the backward for whichever of d_host, d_seed
// is asked for (non-null).
template <typename T>
void valve_forward(bool stream, const T* h, const T* s, T* o, const std::vector<typename Acc<T>::type>& w,
                   int64_t B, int64_t N) {
  if (stream) {
    valve_forward_dense<T, true>(h, s, o, w, B, N);
  } else {
    valve_forward_dense<T, false>(h, s, o, w, B, N);
  }
}

template <typename T>
void valve_backward(bool stream, const T* g, const T* h, const T* s, T* dh, T* ds, double* partial, bool isolate,
                    const std::vector<typename Acc<T>::type>& w, int64_t B, int64_t N) {
  if (dh && ds) {
    valve_backward_stream<T, true, true>(stream, g, h, s, dh, ds, partial, isolate, w, B, N);
  } else if (dh) {
    valve_backward_stream<T, true, false>(stream, g, h, s, dh, ds, partial, isolate, w, B, N);
  } else if (ds) {
    valve_backward_stream<T, false, true>(stream, g, h, s, dh, ds, partial, isolate, w, B, N);
  } else {
    valve_backward_stream<T, false, false>(stream, g, h, s, dh, ds, partial, isolate, w, B, N);
  }
}

}  // namespace KASMINA_VALVE_NS
// NOLINTEND(build/include_guard)
