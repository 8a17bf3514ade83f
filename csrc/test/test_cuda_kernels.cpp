// The CUDA kernels' device code, run on the CPU (cuda_emulation.h) by ctest:
// blend and valve forward/backward and the multi-tensor norms against fp64 loops, over
// dtypes, vector widths, odd sizes, tails, misaligned starts, grids smaller
// than the work (grid-stride loops) and block orders (the last-block d_alpha
// must not depend on which block finishes last). Build with AddressSanitizer
// (CMake does where the compiler has it) to also catch out-of-bounds accesses.
#include "cuda_emulation.h"

// the device headers after the emulation
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>

#include "../cuda/blend_kernels.cuh"
#include "../chunk_table.h"
#include "../cuda/multi_tensor_norm_kernels.cuh"
#include "../cuda/valve_kernels.cuh"

namespace {

using cuda_emulation::launch;
using Order = std::vector<int64_t>;

int failures = 0;
int checks = 0;

void expect(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

std::mt19937_64 rng(1234);

double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }

template <typename T>
const char* name() {
  if constexpr (std::is_same_v<T, float>) return "fp32";
  if constexpr (std::is_same_v<T, double>) return "fp64";
  if constexpr (std::is_same_v<T, c10::Half>) return "fp16";
  return "bf16";
}

// relative tolerance of one rounding to T (fp32 math for 16-bit types)
template <typename T>
double tol() {
  if constexpr (std::is_same_v<T, double>) return 1e-12;
  if constexpr (std::is_same_v<T, float>) return 1e-5;
  if constexpr (std::is_same_v<T, c10::Half>) return 2e-3;
  return 1.6e-2;
}

template <typename T>
std::vector<T> random_vec(int64_t n) {
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<T>(uniform(-2, 2));
  return v;
}

Order reversed(int64_t n) {
  Order o(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) o[static_cast<size_t>(i)] = n - 1 - i;
  return o;
}

Order shuffled(int64_t n) {
  Order o(static_cast<size_t>(n));
  std::iota(o.begin(), o.end(), 0);
  std::shuffle(o.begin(), o.end(), rng);
  return o;
}

double clamp01d(double a) { return std::isnan(a) ? a : std::min(1.0, std::max(0.0, a)); }

// The backward checks that check_blend and check_valve share: the errors of d_host
// and d_seed (relative, as computed by the caller), untouched outputs not asked
// for, d_alpha's error relative to the sum of its terms' magnitudes, d_alpha
// bitwise the same for every block order, and the counters left at zero.
template <typename T, typename A>
void expect_backward(const std::string& m, double worst_dh, double worst_ds, bool untouched, double worst_da,
                     const std::vector<std::vector<A>>& runs, bool reset) {
  expect(worst_dh <= tol<T>(), m + " d_host: max rel error " + std::to_string(worst_dh));
  expect(worst_ds <= tol<T>(), m + " d_seed: max rel error " + std::to_string(worst_ds));
  expect(untouched, m + ": wrote an output that was not asked for");
  // Relative to the sum of the terms' magnitudes, the error of an fp32 (fp64) sum
  // is at most its depth of additions times eps(A): a few vectors a thread, the
  // block's tree, the partials. 32 eps is at least 35x the worst error seen here
  // (0.9 eps, fp64), and ~100x below what a dropped partial of the 300-block case costs.
  const double da_tol = 32 * static_cast<double>(std::numeric_limits<A>::epsilon());
  expect(worst_da <= da_tol, m + " d_alpha: max rel error " + std::to_string(worst_da));
  for (const auto& run : runs) {
    expect(std::memcmp(run.data(), runs[0].data(), run.size() * sizeof(A)) == 0,
           m + " d_alpha differs between block orders");
  }
  expect(reset, m + ": the counters are back at zero after every launch");
}

// ---- blend -------------------------------------------------------------------------------------

template <typename T, int V>
void check_blend(int64_t B, int64_t N, dim3 grid, bool per_sample) {
  using A = typename kasmina::Acc<T>::type;
  const std::string tag = std::string("blend ") + name<T>() + " V=" + std::to_string(V) + " B=" + std::to_string(B) +
                          " N=" + std::to_string(N) + " grid=" + std::to_string(grid.x) + "x" + std::to_string(grid.y);
  const auto host = random_vec<T>(B * N), seed = random_vec<T>(B * N), grad = random_vec<T>(B * N);
  std::vector<A> alpha(static_cast<size_t>(B));
  const double specials[] = {-0.25, 0.0, 0.5, 1.0, 1.5};
  for (int64_t b = 0; b < B; ++b) alpha[b] = static_cast<A>(b < 5 ? specials[b] : uniform(0, 1));
  const int64_t astride = per_sample ? 1 : 0;

  // forward
  std::vector<T> out(host.size());
  launch(grid, dim3(kasmina::kBlendThreads), &kasmina::blend_forward_kernel<T, V>, {}, host.data(), seed.data(),
         out.data(), alpha.data(), astride, B, N);
  double worst = 0;
  for (int64_t b = 0; b < B; ++b) {
    const double w = clamp01d(static_cast<double>(alpha[b * astride]));
    for (int64_t i = 0; i < N; ++i) {
      const double x = static_cast<double>(host[b * N + i]), y = static_cast<double>(seed[b * N + i]);
      const double want = x + w * (y - x);
      worst = std::max(worst, std::abs(static_cast<double>(out[b * N + i]) - want) / (1 + std::abs(want)));
    }
  }
  expect(worst <= tol<T>(), tag + " forward: max rel error " + std::to_string(worst));

  // backward: every mask; d_alpha by partials + last block (grid.x > 1) or directly
  for (int mask = 0; mask < 8; ++mask) {
    const bool want_dh = mask & 1, want_ds = mask & 2, want_da = mask & 4;
    std::vector<T> dh(host.size(), T(-7)), ds(host.size(), T(-7));
    std::vector<A> partial(static_cast<size_t>(B) * grid.x, A(-7)), d_alpha(static_cast<size_t>(B), A(-7));
    std::vector<unsigned> counter(static_cast<size_t>(B), 0u);
    T* dhp = want_dh ? dh.data() : nullptr;
    T* dsp = want_ds ? ds.data() : nullptr;
    std::vector<std::vector<A>> runs;
    const int64_t n_blocks = static_cast<int64_t>(grid.x) * grid.y;
    // the counters are zeroed once: each launch must leave them at zero for the next
    bool reset = true;
    for (const Order& order : {Order{}, reversed(n_blocks), shuffled(n_blocks)}) {
      std::fill(d_alpha.begin(), d_alpha.end(), A(-7));
      if (want_da) {
        launch(grid, dim3(kasmina::kBlendThreads), &kasmina::blend_backward_kernel<T, V, true>, order, grad.data(),
               host.data(), seed.data(), dhp, dsp, alpha.data(), astride, partial.data(), counter.data(),
               d_alpha.data(), B, N);
        runs.push_back(d_alpha);
        for (int64_t b = 0; b < B; ++b) reset &= counter[b] == 0u;
      } else {
        launch(grid, dim3(kasmina::kBlendThreads), &kasmina::blend_backward_kernel<T, V, false>, order, grad.data(),
               static_cast<const T*>(nullptr), static_cast<const T*>(nullptr), dhp, dsp, alpha.data(), astride,
               static_cast<A*>(nullptr), static_cast<unsigned*>(nullptr), static_cast<A*>(nullptr), B, N);
        break;
      }
    }
    double worst_dh = 0, worst_ds = 0, worst_da = 0;
    bool untouched = true;
    for (int64_t b = 0; b < B; ++b) {
      const double a = static_cast<double>(alpha[b * astride]), w = clamp01d(a);
      double da = 0, scale = 1e-30;
      for (int64_t i = 0; i < N; ++i) {
        const int64_t k = b * N + i;
        const double g = static_cast<double>(grad[k]);
        const double scale_g = 1 + std::abs(g);
        if (want_dh) worst_dh = std::max(worst_dh, std::abs(static_cast<double>(dh[k]) - (1 - w) * g) / scale_g);
        if (want_ds) worst_ds = std::max(worst_ds, std::abs(static_cast<double>(ds[k]) - w * g) / scale_g);
        if (!want_dh) untouched &= static_cast<double>(dh[k]) == -7.0;
        if (!want_ds) untouched &= static_cast<double>(ds[k]) == -7.0;
        const double term = g * (static_cast<double>(seed[k]) - static_cast<double>(host[k]));
        da += term;
        scale += std::abs(term);
      }
      if (!(a >= 0 && a <= 1)) da = 0;
      if (want_da) worst_da = std::max(worst_da, std::abs(static_cast<double>(d_alpha[b]) - da) / scale);
    }
    expect_backward<T, A>(tag + " backward mask=" + std::to_string(mask), worst_dh, worst_ds, untouched, worst_da, runs,
                          reset);
  }
}

template <typename T>
void blend_suite() {
  constexpr int V = 16 / sizeof(T);
  struct Case {
    int64_t B, N;
  };
  for (const Case c : {Case{1, 1}, Case{3, 7}, Case{2, 1001}, Case{5, 3 * 256 + 1}}) {
    check_blend<T, 1>(c.B, c.N, kasmina::blend_grid(c.B, c.N, 2), true);
    check_blend<T, 1>(c.B, c.N, dim3(3, 2), true);  // fewer y blocks than samples, idle x blocks
  }
  for (const Case c : {Case{1, V}, Case{4, 64 * V}, Case{3, 256 * V * 3 + V}, Case{6, 40 * V}}) {
    check_blend<T, V>(c.B, c.N, kasmina::blend_grid(c.B, c.N / V, 2), true);
    check_blend<T, V>(c.B, c.N, dim3(2, 4), true);
    check_blend<T, V>(c.B, c.N, dim3(1, 2), true);  // one block per sample: d_alpha written directly
  }
  check_blend<T, V>(1, 1000 * V, dim3(5, 1), false);  // a 0-d alpha: one block of B * N elements
  // more x blocks than a block has threads (an H100 runs ~1056 for one sample), each
  // with a row of vectors: the last block adds the partials in several strides
  if constexpr (std::is_same_v<T, float>) {
    constexpr int64_t gx = kasmina::kBlendThreads + 44;
    check_blend<T, V>(2, gx * kasmina::kBlendThreads * V, dim3(gx, 2), true);
  }
}

// ---- valve -------------------------------------------------------------------------------------

// valve forward and backward (every output subset, isolated or not) against an fp64 loop;
// d_alpha bitwise the same for three block orders, the counters back at zero.
template <typename T, int V>
void check_valve(int64_t B, int64_t N, dim3 grid, bool per_sample) {
  using A = typename kasmina::Acc<T>::type;
  const std::string tag = std::string("valve ") + name<T>() + " V=" + std::to_string(V) + " B=" + std::to_string(B) +
                          " N=" + std::to_string(N) + " grid=" + std::to_string(grid.x) + "x" + std::to_string(grid.y);
  const auto host = random_vec<T>(B * N), seed = random_vec<T>(B * N), grad = random_vec<T>(B * N);
  std::vector<A> alpha(static_cast<size_t>(B));
  const double specials[] = {-0.25, 0.0, 0.5, 1.0, 1.5};
  for (int64_t b = 0; b < B; ++b) alpha[b] = static_cast<A>(b < 5 ? specials[b] : uniform(0, 1));
  const int64_t astride = per_sample ? 1 : 0;
  auto at = [](const std::vector<T>& v, int64_t k) { return static_cast<double>(v[static_cast<size_t>(k)]); };

  std::vector<T> out(host.size());
  launch(grid, dim3(kasmina::kBlendThreads), &kasmina::valve_forward_kernel<T, V>, {}, host.data(), seed.data(),
         out.data(), alpha.data(), astride, B, N);
  double worst = 0;
  for (int64_t b = 0; b < B; ++b) {
    const double w = clamp01d(static_cast<double>(alpha[b * astride]));
    for (int64_t i = 0; i < N; ++i) {
      const int64_t k = b * N + i;
      const double want = at(host, k) * (1 + w * std::tanh(at(seed, k) - at(host, k)));
      worst = std::max(worst, std::abs(at(out, k) - want) / (1 + std::abs(want)));
    }
  }
  expect(worst <= tol<T>(), tag + " forward: max rel error " + std::to_string(worst));

  // every subset of outputs, and isolate with all three (it changes d_host only)
  for (int mask : {0, 1, 2, 3, 4, 5, 6, 7, 15}) {
    const bool want_dh = mask & 1, want_ds = mask & 2, want_da = mask & 4, isolate = mask & 8;
    std::vector<T> dh(host.size(), T(-7)), ds(host.size(), T(-7));
    std::vector<A> partial(static_cast<size_t>(B) * grid.x, A(-7)), d_alpha(static_cast<size_t>(B), A(-7));
    std::vector<unsigned> counter(static_cast<size_t>(B), 0u);
    T* dhp = want_dh ? dh.data() : nullptr;
    T* dsp = want_ds ? ds.data() : nullptr;
    std::vector<std::vector<A>> runs;
    const int64_t n_blocks = static_cast<int64_t>(grid.x) * grid.y;
    bool reset = true;
    for (const Order& order : {Order{}, reversed(n_blocks), shuffled(n_blocks)}) {
      if (want_da) {
        launch(grid, dim3(kasmina::kBlendThreads), &kasmina::valve_backward_kernel<T, V, true>, order, grad.data(),
               host.data(), seed.data(), dhp, dsp, alpha.data(), astride, isolate, partial.data(), counter.data(),
               d_alpha.data(), B, N);
        runs.push_back(d_alpha);
        for (int64_t b = 0; b < B; ++b) reset &= counter[b] == 0u;
      } else {
        launch(grid, dim3(kasmina::kBlendThreads), &kasmina::valve_backward_kernel<T, V, false>, order, grad.data(),
               host.data(), seed.data(), dhp, dsp, alpha.data(), astride, isolate, static_cast<A*>(nullptr),
               static_cast<unsigned*>(nullptr), static_cast<A*>(nullptr), B, N);
        break;
      }
    }
    double worst_dh = 0, worst_ds = 0, worst_da = 0;
    bool untouched = true;
    for (int64_t b = 0; b < B; ++b) {
      const double a = static_cast<double>(alpha[b * astride]), w = clamp01d(a);
      double da = 0, scale = 1e-30;
      for (int64_t i = 0; i < N; ++i) {
        const int64_t k = b * N + i;
        const double g = at(grad, k), h = at(host, k), t = std::tanh(at(seed, k) - h);
        const double q = g * h * w * (1 - t * t);
        const double want_h = g * (1 + w * t) - (isolate ? 0.0 : q);
        const double yard = 1 + std::abs(g) * (1 + std::abs(h));
        if (want_dh) worst_dh = std::max(worst_dh, std::abs(at(dh, k) - want_h) / yard);
        if (want_ds) worst_ds = std::max(worst_ds, std::abs(at(ds, k) - q) / yard);
        if (!want_dh) untouched &= at(dh, k) == -7.0;
        if (!want_ds) untouched &= at(ds, k) == -7.0;
        da += g * h * t;
        scale += std::abs(g * h * t);
      }
      if (!(a >= 0 && a <= 1)) da = 0;
      if (want_da) worst_da = std::max(worst_da, std::abs(static_cast<double>(d_alpha[b]) - da) / scale);
    }
    expect_backward<T, A>(tag + " backward mask=" + std::to_string(mask), worst_dh, worst_ds, untouched, worst_da, runs,
                          reset);
  }
}

template <typename T>
void valve_suite() {
  constexpr int V = 16 / sizeof(T);
  check_valve<T, 1>(3, 7, dim3(3, 2), true);
  check_valve<T, 1>(3, 2 * 256 + 1, kasmina::blend_grid(3, 2 * 256 + 1, 2), true);
  check_valve<T, V>(4, 64 * V, dim3(2, 4), true);
  check_valve<T, V>(2, 256 * V * 2 + V, kasmina::blend_grid(2, 256 * 2 + 1, 2), true);
  check_valve<T, V>(2, 40 * V, dim3(1, 2), true);  // one block per sample: d_alpha written directly
  check_valve<T, V>(1, 1000 * V, dim3(5, 1), false);  // a 0-d alpha
}

// The launcher's grid: y covers the samples (capped at 65535, the kernels stride over the
// rest), x never has more blocks than 256-thread rows of vectors, and fills ~8 blocks per SM.
void blend_grid_suite() {
  struct Case {
    int64_t B, nvec, sms;
  };
  for (const Case c : {Case{1, 1, 132}, Case{256, 16384, 132}, Case{32, 98304, 132}, Case{128, 4096, 132},
                       Case{70000, 64, 132}, Case{1, 1 << 28, 108}, Case{3, 0, 132}}) {
    const dim3 g = kasmina::blend_grid(c.B, c.nvec, c.sms);
    const std::string tag = "blend_grid B=" + std::to_string(c.B) + " nvec=" + std::to_string(c.nvec);
    expect(g.y == std::min<int64_t>(c.B, kasmina::kMaxGridY), tag + ": one y block per sample up to 65535");
    expect(g.x >= 1 && g.x <= std::max<int64_t>(1, kasmina::ceil_div(c.nvec, kasmina::kBlendThreads)),
           tag + ": no x block without work");
    const int64_t rows = std::max<int64_t>(1, c.B * kasmina::ceil_div(c.nvec, kasmina::kBlendThreads));
    expect(static_cast<int64_t>(g.x) * g.y >= std::min<int64_t>(c.sms * 8, rows),
           tag + ": enough blocks to fill the device when there is work for them");
  }
}

// ---- norms -------------------------------------------------------------------------------------

void chunk_table_suite() {
  const std::vector<kasmina::ChunkSource> src = {
      {1000, 10, 0}, {2000, 0, 0}, {3000, 25, 1}, {4000, 8, 0}, {5000, 1, 1}};
  const kasmina::ChunkTable t = kasmina::build_chunk_table(src, 8);
  expect(t.n_partials == 2 + 0 + 4 + 1 + 1, "chunk table: one slot per chunk");
  expect(t.first == std::vector<int64_t>({0, 2, 2, 6, 7}), "chunk table: slots numbered in list order");
  expect(t.count == std::vector<int64_t>({2, 0, 4, 1, 1}), "chunk table: chunk counts");
  expect(t.groups.size() == 2 && t.groups[0].dtype == 0 && t.groups[1].dtype == 1, "chunk table: a group per dtype");
  // every element of every tensor in exactly one chunk, the chunk's sum in its tensor's slot range
  std::vector<std::vector<int>> seen(src.size());
  for (size_t i = 0; i < src.size(); ++i) seen[i].assign(static_cast<size_t>(src[i].numel), 0);
  for (const auto& g : t.groups) {
    for (int64_t c = 0; c < g.n_chunks; ++c) {
      const int64_t addr = g.table[c], first = g.table[g.n_chunks + c], len = g.table[2 * g.n_chunks + c],
                    slot = g.table[3 * g.n_chunks + c];
      size_t i = 0;
      while (i < src.size() && src[i].address != addr) ++i;
      expect(i < src.size() && src[i].dtype == g.dtype, "chunk table: address of a listed tensor, in its group");
      if (i == src.size()) continue;
      expect(slot >= t.first[i] && slot < t.first[i] + t.count[i], "chunk table: slot in the tensor's range");
      for (int64_t k = first; k < first + len; ++k) {
        expect(k >= 0 && k < src[i].numel, "chunk table: chunk inside its tensor");
        if (k >= 0 && k < src[i].numel) ++seen[i][static_cast<size_t>(k)];
      }
    }
  }
  for (const auto& s : seen) {
    for (int n : s) expect(n == 1, "chunk table: every element covered once");
  }
}

// A list of mixed-dtype tensors in one byte arena (so starts can be misaligned).
struct NormCase {
  std::vector<std::vector<unsigned char>> storage;
  std::vector<kasmina::ChunkSource> sources;
  std::vector<double> want;  // fp64 sum of squares per tensor

  template <typename T>
  void add(int64_t n, int64_t misalign, double poison = 0) {
    storage.emplace_back(static_cast<size_t>((n + misalign) * static_cast<int64_t>(sizeof(T)) + 16));
    unsigned char* base = storage.back().data();
    while (reinterpret_cast<uintptr_t>(base) % 16) ++base;
    T* p = reinterpret_cast<T*>(base) + misalign;
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) {
      p[i] = static_cast<T>(uniform(-3, 3));
      const double d = static_cast<double>(p[i]);
      ss += d * d;
    }
    if (poison != 0 && n > 0) {
      p[n / 2] = static_cast<T>(poison);
      ss = poison;
    }
    int dtype = std::is_same_v<T, float> ? 0 : std::is_same_v<T, double> ? 1 : std::is_same_v<T, c10::Half> ? 2 : 3;
    sources.push_back({reinterpret_cast<int64_t>(p), n, dtype});
    want.push_back(ss);
  }

  // runs the chunk kernels with `grid` blocks per group (in `order_kind` 0
  // forward, 1 reversed, 2 shuffled); with `stats`, the last group's launch
  // finalizes gradient_stats as the CUDA launcher does (one block alone when
  // the table has no chunks)
  std::vector<double> partials(const kasmina::ChunkTable& t, unsigned grid, int order_kind,
                               const kasmina::StatsArgs* stats = nullptr) const {
    std::vector<double> partial(static_cast<size_t>(std::max<int64_t>(t.n_partials, 1)), -7.0);
    const dim3 bd(kasmina::kNormThreads);
    if (stats != nullptr && t.groups.empty()) {
      launch(dim3(1), bd, &kasmina::sumsq_chunks_kernel<float, true>, {}, static_cast<const int64_t*>(nullptr),
             int64_t{0}, partial.data(), *stats);
    }
    for (size_t gi = 0; gi < t.groups.size(); ++gi) {
      const auto& g = t.groups[gi];
      const unsigned blocks = std::min<unsigned>(grid, static_cast<unsigned>(g.n_chunks));
      const Order order = order_kind == 0 ? Order{} : order_kind == 1 ? reversed(blocks) : shuffled(blocks);
      const bool fin = stats != nullptr && gi + 1 == t.groups.size();
      auto run = [&](auto plain, auto with_stats) {
        if (fin) {
          launch(dim3(blocks), bd, with_stats, order, g.table.data(), g.n_chunks, partial.data(), *stats);
        } else {
          launch(dim3(blocks), bd, plain, order, g.table.data(), g.n_chunks, partial.data(), kasmina::StatsArgs{});
        }
      };
      if (g.dtype == 0) run(&kasmina::sumsq_chunks_kernel<float, false>, &kasmina::sumsq_chunks_kernel<float, true>);
      if (g.dtype == 1) run(&kasmina::sumsq_chunks_kernel<double, false>, &kasmina::sumsq_chunks_kernel<double, true>);
      if (g.dtype == 2) {
        run(&kasmina::sumsq_chunks_kernel<c10::Half, false>, &kasmina::sumsq_chunks_kernel<c10::Half, true>);
      }
      if (g.dtype == 3) {
        run(&kasmina::sumsq_chunks_kernel<c10::BFloat16, false>, &kasmina::sumsq_chunks_kernel<c10::BFloat16, true>);
      }
    }
    return partial;
  }
};

void norms_suite() {
  constexpr int64_t C = kasmina::kNormChunk;
  NormCase nc;
  nc.add<float>(C * 2 + 5, 0);
  nc.add<c10::BFloat16>(0, 0);
  nc.add<c10::Half>(1, 0);
  nc.add<double>(C + 3, 1);  // misaligned start: scalar loads only
  nc.add<float>(C, 3);
  nc.add<c10::BFloat16>(C * 3 + 17, 0);
  nc.add<float>(4096, 0);
  nc.add<c10::Half>(333, 5);
  nc.add<float>(6802, 0);  // one unrolled pass of 4 vectors a thread, then 1 or 2 single vectors, then 2 scalars
  nc.add<double>(C, 0);    // aligned fp64: four unrolled passes
  const kasmina::ChunkTable t = kasmina::build_chunk_table(nc.sources, C);
  const int64_t n = static_cast<int64_t>(nc.sources.size());
  for (const unsigned grid : {1u, 3u, 1000u}) {
    const std::vector<double> partial = nc.partials(t, grid, 0);
    expect(partial == nc.partials(t, grid, 1), "sumsq partials differ between block orders");
    // per-tensor norms
    std::vector<float> norms(static_cast<size_t>(n), -7.f);
    launch(dim3(static_cast<unsigned>(std::min<int64_t>(n, 2))), dim3(kasmina::kNormThreads),
           &kasmina::norms_finalize_kernel, {}, partial.data(), t.first.data(), t.count.data(), norms.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double want = std::sqrt(nc.want[i]);
      expect(std::abs(norms[i] - want) <= 1e-6 * want + 1e-30,
             "norm of tensor " + std::to_string(i) + " (grid " + std::to_string(grid) + "): " +
                 std::to_string(norms[i]) + " vs " + std::to_string(want));
    }
    // gradient stats over every split of the list into host and seed tensors,
    // finalized by the last block of the last launch; the counter is zeroed
    // once and must be back at zero after every call
    unsigned counter = 0;
    for (int64_t n_host = 0; n_host <= n; ++n_host) {
      for (const auto& counts : {std::pair<int64_t, int64_t>{0, 0}, {1000, 10}}) {
        std::vector<std::array<float, 4>> runs;
        for (int order_kind = 0; order_kind < 3; ++order_kind) {
          std::array<float, 4> got = {-7, -7, -7, -7};
          kasmina::StatsArgs a;
          a.counter = &counter;
          a.host_slots = n_host < n ? t.first[n_host] : t.n_partials;
          a.n_slots = t.n_partials;
          a.host_params = counts.first;
          a.seed_params = counts.second;
          a.out = got.data();
          nc.partials(t, grid, order_kind, &a);
          expect(counter == 0u, "gradient stats: the counter is back at zero");
          runs.push_back(got);
        }
        float want[4];
        double hs = 0, ss = 0;
        for (int64_t i = 0; i < n; ++i) (i < n_host ? hs : ss) += nc.want[i];
        kasmina::gradient_stats_from_sums(hs, ss, counts.first, counts.second, want);
        const std::string m = "gradient stats with " + std::to_string(n_host) + " host tensors (grid " +
                              std::to_string(grid) + ")";
        for (int k = 0; k < 4; ++k) {
          expect(std::abs(runs[0][k] - want[k]) <= 1e-6 * std::abs(want[k]) + 1e-30,
                 m + " [" + std::to_string(k) + "]: " + std::to_string(runs[0][k]) + " vs " + std::to_string(want[k]));
        }
        expect(runs[1] == runs[0] && runs[2] == runs[0], m + ": the same bits in every block order");
      }
    }
  }
  // a list with no chunks: one block finalizes zeros
  {
    const kasmina::ChunkTable empty = kasmina::build_chunk_table({}, C);
    unsigned counter = 0;
    float got[4] = {-7, -7, -7, -7};
    kasmina::StatsArgs a;
    a.counter = &counter;
    a.host_params = 5;
    a.seed_params = 5;
    a.out = got;
    NormCase none;
    none.partials(empty, 4, 0, &a);
    expect(got[0] == 0.f && got[1] == 0.f && got[2] == 0.f && got[3] == 0.f && counter == 0u,
           "gradient stats of a list with no chunks: zeros");
  }
  // a NaN or an inf anywhere raises the non-finite flag
  for (const double poison : {NAN, INFINITY}) {
    NormCase bad;
    bad.add<float>(C + 1, 0);
    bad.add<c10::BFloat16>(100, 0, poison);
    const kasmina::ChunkTable tb = kasmina::build_chunk_table(bad.sources, C);
    unsigned counter = 0;
    float got[4];
    kasmina::StatsArgs a;
    a.counter = &counter;
    a.host_slots = tb.first[1];
    a.n_slots = tb.n_partials;
    a.out = got;
    bad.partials(tb, 4, 0, &a);
    expect(got[3] == 1.0f, "a non-finite seed gradient sets the flag");
  }
}

// The finalizes over more partials than a block has threads: a tensor of more
// than kNormThreads chunks (2M elements and up) for foreach_norm, more than
// kNormThreads chunks a side for gradient_stats. The partials are synthetic
// integers, so every order of addition gives the exact sum and the results
// must match bit for bit.
void norm_finalize_suite() {
  const int64_t threads = kasmina::kNormThreads;
  const std::vector<int64_t> counts = {700, 0, 1, threads, threads + 1, 3 * threads + 5};
  std::vector<int64_t> first, count;
  std::vector<double> partial, sums;
  for (const int64_t c : counts) {
    first.push_back(static_cast<int64_t>(partial.size()));
    count.push_back(c);
    double sum = 0;
    for (int64_t k = 0; k < c; ++k) {
      partial.push_back(static_cast<double>((k * 7919) % 1000 + 1));
      sum += partial.back();
    }
    sums.push_back(sum);
  }
  const int64_t n = static_cast<int64_t>(counts.size());
  const int64_t slots = static_cast<int64_t>(partial.size());
  for (const unsigned grid : {1u, 4u}) {
    std::vector<float> norms(static_cast<size_t>(n), -7.f);
    launch(dim3(grid), dim3(kasmina::kNormThreads), &kasmina::norms_finalize_kernel, {}, partial.data(), first.data(),
           count.data(), norms.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      expect(norms[i] == static_cast<float>(std::sqrt(sums[i])),
             "norm of a tensor of " + std::to_string(counts[i]) + " partials (grid " + std::to_string(grid) + ")");
    }
  }
  for (const int64_t host_slots : {int64_t{0}, int64_t{300}, int64_t{700}, slots}) {
    unsigned counter = 0;
    float got[4] = {-7, -7, -7, -7};
    kasmina::StatsArgs a;
    a.counter = &counter;
    a.host_slots = host_slots;
    a.n_slots = slots;
    a.host_params = 1000;
    a.seed_params = 10;
    a.out = got;
    // a launch with no chunks: its one block only finalizes, as after the chunk launches
    launch(dim3(1), dim3(kasmina::kNormThreads), &kasmina::sumsq_chunks_kernel<float, true>, {},
           static_cast<const int64_t*>(nullptr), int64_t{0}, partial.data(), a);
    double hs = 0, ss = 0;
    for (int64_t k = 0; k < slots; ++k) (k < host_slots ? hs : ss) += partial[static_cast<size_t>(k)];
    float want[4];
    kasmina::gradient_stats_from_sums(hs, ss, 1000, 10, want);
    for (int k = 0; k < 4; ++k) {
      expect(got[k] == want[k], "gradient stats over " + std::to_string(host_slots) + " host and " +
                                    std::to_string(slots - host_slots) + " seed partials [" + std::to_string(k) + "]");
    }
    expect(counter == 0u, "gradient stats over many partials: the counter is back at zero");
  }
}

}  // namespace

int main() {
  blend_suite<float>();
  blend_suite<double>();
  blend_suite<c10::Half>();
  blend_suite<c10::BFloat16>();
  valve_suite<float>();
  valve_suite<double>();
  valve_suite<c10::Half>();
  valve_suite<c10::BFloat16>();
  blend_grid_suite();
  chunk_table_suite();
  norms_suite();
  norm_finalize_suite();
  std::printf("%d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
