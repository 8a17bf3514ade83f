// kasmina::foreach_norm and kasmina::gradient_stats on CUDA: the sums of
// squares of a whole list of tensors in one launch per dtype.
//
// Math: sumsq_i = sum(t_i^2) in fp64 (squares of large fp32 gradients would
// overflow fp32 and raise a false non-finite flag); foreach_norm returns
// sqrt(sumsq_i) as fp32 [N]; gradient_stats applies norms_math.h.
// Work split: every tensor is cut into kChunk-element chunks; a chunk table
// (address, first element, length, partial slot) drives a grid with one block
// per chunk, 16-byte loads where the chunk is aligned. Each block reduces its
// chunk in a fixed order into one fp64 partial; a finalize block per tensor
// adds that tensor's partials in order. Bitwise deterministic, no atomics.
// Memory traffic: one read of every element plus 8 bytes per chunk.
// The chunk table is cached by the list's (address, size, dtype) signature,
// so a loop that keeps its .grad tensors uploads it once; a CUDA graph can
// capture the launches after a warm-up call.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <iterator>
#include <list>
#include <mutex>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../layout.h"
#include "../norms_math.h"
#include "block_reduce.cuh"

namespace kasmina {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 16384;
constexpr size_t kCachedPlans = 16;

template <typename T>
__global__ void sumsq_chunks_kernel(const int64_t* __restrict__ table, int64_t n_chunks, double* __restrict__ partial) {
  __shared__ double shared[32];
  constexpr int V = 16 / sizeof(T);
  struct alignas(16) Vec {
    T v[V];
  };
  for (int64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) {
    const T* p = reinterpret_cast<const T*>(table[c]) + table[n_chunks + c];
    const int64_t len = table[2 * n_chunks + c];
    double acc = 0.0;
    if (reinterpret_cast<std::uintptr_t>(p) % 16 == 0) {
      const int64_t nvec = len / V;
      const Vec* pv = reinterpret_cast<const Vec*>(p);
      for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
        const Vec x = pv[i];
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const double d = static_cast<double>(x.v[k]);
          acc += d * d;
        }
      }
      for (int64_t i = nvec * V + threadIdx.x; i < len; i += blockDim.x) {
        const double d = static_cast<double>(p[i]);
        acc += d * d;
      }
    } else {
      for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
        const double d = static_cast<double>(p[i]);
        acc += d * d;
      }
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) partial[table[3 * n_chunks + c]] = acc;
  }
}

// out[i] = sum of tensor i's partials [first_i, first_i + count_i), in order.
__global__ void sumsq_finalize_kernel(const double* __restrict__ partial, const int64_t* __restrict__ first,
                                      const int64_t* __restrict__ count, double* __restrict__ out, int64_t n) {
  __shared__ double shared[32];
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    double acc = 0.0;
    for (int64_t k = threadIdx.x; k < count[i]; k += blockDim.x) acc += partial[first[i] + k];
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) out[i] = acc;
  }
}

__global__ void sqrt_to_float_kernel(const double* __restrict__ ss, float* __restrict__ out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = static_cast<float>(sqrt(ss[i]));
}

// One thread: the two group sums in order, then the formula.
__global__ void stats_kernel(const double* __restrict__ ss, int64_t n_host, int64_t n, int64_t host_params,
                             int64_t seed_params, float* __restrict__ out) {
  double host = 0.0, seed = 0.0;
  for (int64_t i = 0; i < n; ++i) (i < n_host ? host : seed) += ss[i];
  gradient_stats_from_sums(host, seed, host_params, seed_params, out);
}

// ---- the chunk-table plan, cached per list signature -----------------------------------------

struct Plan {
  std::vector<std::tuple<at::ScalarType, int64_t, at::Tensor>> groups;  // dtype, chunks, table [4, chunks]
  at::Tensor first, count;                                              // per tensor, int64, on the device
  int64_t n_partials = 0;
};

using Signature = std::vector<std::tuple<int64_t, int64_t, int64_t>>;  // address, numel, dtype

Plan build_plan(const std::vector<at::Tensor>& ts, const at::Device& device) {
  Plan plan;
  std::vector<int64_t> first, count;
  std::vector<std::pair<at::ScalarType, std::vector<std::vector<int64_t>>>> rows;
  for (const at::Tensor& t : ts) {
    const int64_t n = t.numel(), chunks = ceil_div(n, kChunk);
    first.push_back(plan.n_partials);
    count.push_back(chunks);
    if (chunks > 0) {
      auto it = std::find_if(rows.begin(), rows.end(), [&](const auto& r) { return r.first == t.scalar_type(); });
      if (it == rows.end()) {
        rows.push_back({t.scalar_type(), std::vector<std::vector<int64_t>>(4)});
        it = std::prev(rows.end());
      }
      const int64_t addr = reinterpret_cast<int64_t>(t.const_data_ptr());
      for (int64_t c = 0; c < chunks; ++c) {
        it->second[0].push_back(addr);
        it->second[1].push_back(c * kChunk);
        it->second[2].push_back(std::min(kChunk, n - c * kChunk));
        it->second[3].push_back(plan.n_partials + c);
      }
    }
    plan.n_partials += chunks;
  }
  auto upload = [&](const std::vector<int64_t>& v) {
    return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(device);
  };
  for (const auto& row : rows) {
    std::vector<int64_t> flat;
    for (const auto& col : row.second) flat.insert(flat.end(), col.begin(), col.end());
    plan.groups.emplace_back(row.first, static_cast<int64_t>(row.second[0].size()), upload(flat));
  }
  plan.first = upload(first);
  plan.count = upload(count);
  return plan;
}

const Plan& cached_plan(const std::vector<at::Tensor>& ts, const at::Device& device) {
  static std::mutex mutex;
  static std::list<std::pair<std::pair<Signature, int>, Plan>> cache;  // most recent first
  Signature sig;
  for (const at::Tensor& t : ts) {
    sig.emplace_back(reinterpret_cast<int64_t>(t.const_data_ptr()), t.numel(), static_cast<int64_t>(t.scalar_type()));
  }
  const std::pair<Signature, int> key{sig, device.index()};
  std::lock_guard<std::mutex> lock(mutex);
  for (auto it = cache.begin(); it != cache.end(); ++it) {
    if (it->first == key) {
      cache.splice(cache.begin(), cache, it);
      return cache.front().second;
    }
  }
  cache.emplace_front(key, build_plan(ts, device));
  if (cache.size() > kCachedPlans) cache.pop_back();
  return cache.front().second;
}

// fp64 [N] sums of squares of every tensor (dense layouts read in place,
// other strided views through a contiguous copy).
at::Tensor sums_of_squares_cuda(at::TensorList tensors, const at::Device& device) {
  std::vector<at::Tensor> ts;
  for (const at::Tensor& t : tensors) ts.push_back(t.is_non_overlapping_and_dense() ? t : t.contiguous());
  const int64_t n = static_cast<int64_t>(ts.size());
  at::Tensor out = at::empty({n}, at::TensorOptions().dtype(at::kDouble).device(device));
  if (n == 0) return out;
  const Plan& plan = cached_plan(ts, device);
  at::Tensor partial = at::empty({std::max<int64_t>(plan.n_partials, 1)}, out.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (const auto& group : plan.groups) {
    const at::ScalarType dtype = std::get<0>(group);
    const int64_t chunks = std::get<1>(group);
    const at::Tensor& table = std::get<2>(group);
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(chunks, 65535 * 8));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "kasmina_sumsq_cuda", [&] {
      sumsq_chunks_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(table.const_data_ptr<int64_t>(), chunks,
                                                                   partial.mutable_data_ptr<double>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(n, 65535 * 8));
  sumsq_finalize_kernel<<<blocks, kThreads, 0, stream>>>(partial.const_data_ptr<double>(),
                                                         plan.first.const_data_ptr<int64_t>(),
                                                         plan.count.const_data_ptr<int64_t>(),
                                                         out.mutable_data_ptr<double>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

at::Tensor foreach_norm_cuda(at::TensorList tensors) {
  check_foreach_norm_args(tensors);
  const at::Device device = tensors[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const at::Tensor ss = sums_of_squares_cuda(tensors, device);
  at::Tensor out = at::empty(ss.sizes(), ss.options().dtype(at::kFloat));
  const int64_t n = ss.numel();
  sqrt_to_float_kernel<<<static_cast<unsigned>(ceil_div(n, kThreads)), kThreads, 0,
                         c10::cuda::getCurrentCUDAStream()>>>(ss.const_data_ptr<double>(),
                                                              out.mutable_data_ptr<float>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor gradient_stats_cuda(at::TensorList host_grads, at::TensorList seed_grads, int64_t host_params,
                               int64_t seed_params) {
  check_gradient_stats_args(host_grads, seed_grads, host_params, seed_params);
  const at::Device device = *first_device(host_grads, seed_grads);
  const c10::cuda::CUDAGuard guard(device);
  std::vector<at::Tensor> all = host_grads.vec();
  all.insert(all.end(), seed_grads.begin(), seed_grads.end());
  const at::Tensor ss = sums_of_squares_cuda(all, device);
  at::Tensor out = at::empty({4}, ss.options().dtype(at::kFloat));
  stats_kernel<<<1, 1, 0, c10::cuda::getCurrentCUDAStream()>>>(
      ss.const_data_ptr<double>(), static_cast<int64_t>(host_grads.size()), ss.numel(), host_params, seed_params,
      out.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace kasmina

TORCH_LIBRARY_IMPL(kasmina, CUDA, m) {
  m.impl("foreach_norm", &kasmina::foreach_norm_cuda);
  m.impl("gradient_stats", &kasmina::gradient_stats_cuda);
}
