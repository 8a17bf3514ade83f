// The loops of kasmina::valve's CPU kernels (csrc/cpu/valve.cpp includes this
// file twice: for the baseline target and, on x86, under a target pragma for
// AVX2 + FMA, each time in its own namespace KASMINA_VALVE_NS). No include guard
// on purpose. What the element loops call must inline into them (tanh_fast and
// the conversions are inline; over_lines is always_inline): a baseline callee
// cannot inline an AVX2 lambda, and a call per element would end vectorization.
// (for_each_chunk calls its lambda once per 16384-element chunk: no matter.)
// NOLINTBEGIN(build/include_guard)
namespace KASMINA_VALVE_NS {

using cpu::Acc;
using cpu::kChunk;

template <typename T, bool STREAM>
void valve_forward_dense(const T* h, const T* s, T* o, const std::vector<typename Acc<T>::type>& w, int64_t B,
                         int64_t N) {
  using A = typename Acc<T>::type;
  cpu::for_each_chunk<STREAM>(B, N, cpu::task_grain(std::min(N, kChunk) / 4), [&](int64_t, int64_t b, int64_t lo,
                                                                                  int64_t hi) {
    const A wb = w[b];
    cpu::over_lines<STREAM, true, false>(lo, hi, o, o, [&](int64_t i0, int64_t i1, T* out, T*, int64_t shift) {
      for (int64_t i = i0; i < i1; ++i) {
        const A hv = static_cast<A>(h[i]);
        out[i - shift] = static_cast<T>(hv * (A(1) + wb * cpu::tanh_fast(static_cast<A>(s[i]) - hv)));
      }
      return 0;
    });
  });
}

// One pass over g, host and seed: writes d_host (DH) and d_seed (DS) and, with
// `partial`, one partial d_alpha sum per task. (Both flags are template
// arguments: a store under a run-time test would keep the loop from vectorizing.)
template <typename T, bool DH, bool DS, bool STREAM>
void valve_backward_dense(const T* g, const T* h, const T* s, T* dh, T* ds, double* partial, bool isolate,
                          const std::vector<typename Acc<T>::type>& w, int64_t B, int64_t N) {
  using A = typename Acc<T>::type;
  const A keep = isolate ? A(0) : A(1);  // d_host = g (1 + w t) - keep * d_seed
  // (a tanh and five arrays an element: worth threads at a few thousand elements)
  cpu::for_each_chunk<STREAM>(B, N, cpu::task_grain(std::min(N, kChunk) / 4), [&](int64_t t, int64_t b, int64_t lo,
                                                                                  int64_t hi) {
    const A wb = w[b];
    const A acc = cpu::over_lines<STREAM, DH, DS>(lo, hi, dh, ds, [&](int64_t i0, int64_t i1, T* odh, T* ods,
                                                                        int64_t shift) {
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
    });
    if (partial) partial[t] = static_cast<double>(acc);
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
