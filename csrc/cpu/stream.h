// Non-temporal ("streaming") stores for the CPU kernels.
//
// A regular store to a line that is not in cache first reads the line (read
// for ownership), so every output pass of a large tensor costs two passes of
// memory traffic. Streaming stores write whole cache lines without reading
// them. They pay only when the output does not fit in cache anyway, so the
// kernels use them above kStreamBytes and keep regular stores below (a small
// output is better left in cache for the next op).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#define KASMINA_HAVE_STREAM 1
#else
#define KASMINA_HAVE_STREAM 0
#endif

namespace kasmina::cpu {

constexpr int64_t kLine = 64;                     // bytes per cache line
constexpr int64_t kStreamBytes = 8 * 1024 * 1024;  // outputs at least this large stream

// True when every pointer is cache-line aligned (fresh allocations are) and the
// output is large enough for streaming to pay.
inline bool use_stream(int64_t bytes, std::initializer_list<const void*> outs) {
  if (!KASMINA_HAVE_STREAM || bytes < kStreamBytes) return false;
  for (const void* p : outs) {
    if (p != nullptr && (reinterpret_cast<std::uintptr_t>(p) % kLine) != 0) return false;
  }
  return true;
}

// Writes one cache line (kLine bytes) from `src` to the line-aligned `dst`.
inline void stream_line(void* dst, const void* src) {
#if KASMINA_HAVE_STREAM
  auto* d = reinterpret_cast<__m128i*>(dst);
  const auto* s = reinterpret_cast<const __m128i*>(src);
  _mm_stream_si128(d + 0, _mm_loadu_si128(s + 0));
  _mm_stream_si128(d + 1, _mm_loadu_si128(s + 1));
  _mm_stream_si128(d + 2, _mm_loadu_si128(s + 2));
  _mm_stream_si128(d + 3, _mm_loadu_si128(s + 3));
#else
  std::memcpy(dst, src, kLine);
#endif
}

// Orders this thread's streaming stores before anything that follows.
inline void stream_fence() {
#if KASMINA_HAVE_STREAM
  _mm_sfence();
#endif
}

// The kernels' pass over [lo, hi): run(i0, i1, out_a, out_b, shift) computes
// [i0, i1) into out_a / out_b (each written only if A_OUT / B_OUT) at i - shift
// and returns its partial sum (0 for a forward).
// With STREAM, whole cache lines are computed into line buffers and go out as
// streaming stores (outputs line-aligned at index 0); the partial lines at either
// end, and everything without STREAM, go straight to a and b. Returns the sum of
// the partial sums. Always inlined, so that `run` inlines into its caller's loop
// (csrc/cpu/valve_loops.h compiles its callers for AVX2).
template <bool STREAM, bool A_OUT, bool B_OUT, typename T, typename Run>
__attribute__((always_inline)) inline auto over_lines(int64_t lo, int64_t hi, T* a, T* b, const Run& run) {
  if constexpr (STREAM) {
    constexpr int64_t L = kLine / sizeof(T);
    int64_t i = std::min(hi, (lo + L - 1) / L * L);
    auto acc = run(lo, i, a, b, int64_t{0});
    for (; i + L <= hi; i += L) {
      alignas(64) T la[L];
      alignas(64) T lb[L];
      acc += run(i, i + L, la, lb, i);
      if constexpr (A_OUT) stream_line(a + i, la);
      if constexpr (B_OUT) stream_line(b + i, lb);
    }
    acc += run(i, hi, a, b, int64_t{0});
    return acc;
  } else {
    return run(lo, hi, a, b, int64_t{0});
  }
}

}  // namespace kasmina::cpu
