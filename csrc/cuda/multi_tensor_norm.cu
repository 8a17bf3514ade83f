// kasmina::foreach_norm and kasmina::gradient_stats on CUDA: the launchers.
// The math and the work split are described with the kernels, in
// multi_tensor_norm_kernels.cuh; the chunk table in chunk_table.h.
// Two launches per call with one dtype: the chunk sums, then one finalize
// (per-tensor norms, or the four gradient stats).
// The chunk table is cached by the list's (address, size, dtype) signature,
// so a loop that keeps its .grad tensors uploads it once; a CUDA graph can
// capture the launches after a warm-up call.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <list>
#include <mutex>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../layout.h"
#include "chunk_table.h"
#include "multi_tensor_norm_kernels.cuh"

namespace kasmina {
namespace {

constexpr int kThreads = kNormThreads;
constexpr size_t kCachedPlans = 16;
constexpr int64_t kMaxGrid = 65535 * 8;

// A chunk table on the device, plus the host copy of each tensor's first slot.
struct Plan {
  std::vector<std::tuple<at::ScalarType, int64_t, at::Tensor>> groups;  // dtype, chunks, table [4, chunks]
  at::Tensor first, count;                                              // per tensor, int64, on the device
  std::vector<int64_t> host_first;                                      // per tensor, then n_partials
  int64_t n_partials = 0;
};

using Signature = std::vector<std::tuple<int64_t, int64_t, int64_t>>;  // address, numel, dtype

Plan build_plan(const std::vector<at::Tensor>& ts, const at::Device& device) {
  std::vector<ChunkSource> sources;
  for (const at::Tensor& t : ts) {
    sources.push_back({reinterpret_cast<int64_t>(t.const_data_ptr()), t.numel(), static_cast<int>(t.scalar_type())});
  }
  const ChunkTable table = build_chunk_table(sources, kNormChunk);
  auto upload = [&](const std::vector<int64_t>& v) {
    return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(device);
  };
  Plan plan;
  for (const ChunkGroup& g : table.groups) {
    plan.groups.emplace_back(static_cast<at::ScalarType>(g.dtype), g.n_chunks, upload(g.table));
  }
  plan.first = upload(table.first);
  plan.count = upload(table.count);
  plan.host_first = table.first;
  plan.host_first.push_back(table.n_partials);
  plan.n_partials = table.n_partials;
  return plan;
}

// A copy (tensors by reference count), so that no other thread's eviction can
// pull it away while it is used.
Plan cached_plan(const std::vector<at::Tensor>& ts, const at::Device& device) {
  static std::mutex mutex;
  static std::list<std::pair<std::pair<Signature, int>, Plan>> cache;  // most recent first
  Signature sig;
  sig.reserve(ts.size());
  for (const at::Tensor& t : ts) {
    sig.emplace_back(reinterpret_cast<int64_t>(t.const_data_ptr()), t.numel(), static_cast<int64_t>(t.scalar_type()));
  }
  std::pair<Signature, int> key{std::move(sig), device.index()};
  std::lock_guard<std::mutex> lock(mutex);
  for (auto it = cache.begin(); it != cache.end(); ++it) {
    if (it->first == key) {
      cache.splice(cache.begin(), cache, it);
      return cache.front().second;
    }
  }
  cache.emplace_front(std::move(key), build_plan(ts, device));
  if (cache.size() > kCachedPlans) cache.pop_back();
  return cache.front().second;
}

// Dense layouts are read in place, other strided views through a contiguous copy.
std::vector<at::Tensor> dense_list(at::TensorList a, at::TensorList b = {}) {
  std::vector<at::Tensor> ts;
  ts.reserve(a.size() + b.size());
  for (at::TensorList list : {a, b}) {
    for (const at::Tensor& t : list) ts.push_back(t.is_non_overlapping_and_dense() ? t : t.contiguous());
  }
  return ts;
}

// Launches the chunk sums of every dtype group; returns the fp64 partials.
at::Tensor chunk_sums(const Plan& plan, const at::Device& device, cudaStream_t stream) {
  at::Tensor partial =
      at::empty({std::max<int64_t>(plan.n_partials, 1)}, at::TensorOptions().dtype(at::kDouble).device(device));
  for (const auto& group : plan.groups) {
    const at::ScalarType dtype = std::get<0>(group);
    const int64_t chunks = std::get<1>(group);
    const at::Tensor& table = std::get<2>(group);
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(chunks, kMaxGrid));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "kasmina_sumsq_cuda", [&] {
      sumsq_chunks_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(table.const_data_ptr<int64_t>(), chunks,
                                                                   partial.mutable_data_ptr<double>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return partial;
}

}  // namespace

at::Tensor foreach_norm_cuda(at::TensorList tensors) {
  check_foreach_norm_args(tensors);
  const at::Device device = tensors[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const int64_t n = static_cast<int64_t>(tensors.size());
  at::Tensor out = at::empty({n}, at::TensorOptions().dtype(at::kFloat).device(device));
  const std::vector<at::Tensor> ts = dense_list(tensors);
  const Plan plan = cached_plan(ts, device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor partial = chunk_sums(plan, device, stream);
  norms_finalize_kernel<<<static_cast<unsigned>(std::min<int64_t>(n, kMaxGrid)), kThreads, 0, stream>>>(
      partial.const_data_ptr<double>(), plan.first.const_data_ptr<int64_t>(), plan.count.const_data_ptr<int64_t>(),
      out.mutable_data_ptr<float>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor gradient_stats_cuda(at::TensorList host_grads, at::TensorList seed_grads, int64_t host_params,
                               int64_t seed_params) {
  check_gradient_stats_args(host_grads, seed_grads, host_params, seed_params);
  const at::Device device = *first_device(host_grads, seed_grads);
  const c10::cuda::CUDAGuard guard(device);
  at::Tensor out = at::empty({4}, at::TensorOptions().dtype(at::kFloat).device(device));
  const std::vector<at::Tensor> ts = dense_list(host_grads, seed_grads);
  const Plan plan = cached_plan(ts, device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor partial = chunk_sums(plan, device, stream);
  const int64_t host_slots = plan.host_first[host_grads.size()];
  stats_finalize_kernel<<<1, 1024, 0, stream>>>(partial.const_data_ptr<double>(), host_slots, plan.n_partials,
                                                host_params, seed_params, out.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace kasmina

TORCH_LIBRARY_IMPL(kasmina, CUDA, m) {
  m.impl("foreach_norm", &kasmina::foreach_norm_cuda);
  m.impl("gradient_stats", &kasmina::gradient_stats_cuda);
}
