// kasmina::foreach_norm and kasmina::gradient_stats on CUDA: the launchers.
// The math and the work split are described with the kernels, in
// multi_tensor_norm_kernels.cuh; the chunk table in ../chunk_table.h.
// Two launches per call with one dtype: the chunk sums, then one finalize
// (per-tensor norms, or the four gradient stats).
// The chunk table is cached by the list's (address, size, dtype) signature
// (../norm_plan.h), so a loop that keeps its .grad tensors uploads it once; a
// CUDA graph can capture the launches after a warm-up call.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../norm_plan.h"
#include "multi_tensor_norm_kernels.cuh"

namespace kasmina {
namespace {

constexpr int kThreads = kNormThreads;
constexpr int64_t kMaxGrid = 65535 * 8;

// Launches the chunk sums of every dtype group; returns the fp64 partials.
at::Tensor chunk_sums(const NormPlan& plan, const at::Device& device, cudaStream_t stream) {
  at::Tensor partial = norm_partials(plan, device);
  for (const NormPlan::Group& group : plan.groups) {
    const int64_t chunks = group.n_chunks;
    const int64_t* table = group.table.const_data_ptr<int64_t>();
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(chunks, kMaxGrid));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, group.dtype, "kasmina_sumsq_cuda", [&] {
      sumsq_chunks_kernel<scalar_t>
          <<<grid, kThreads, 0, stream>>>(table, chunks, partial.mutable_data_ptr<double>());
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
  const TensorRefs ts = dense_list(tensors);
  const NormPlan plan =
      cached_norm_plan(ts, device, kNormChunk, /*split_alignment=*/false, "kasmina::foreach_norm");
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
  const TensorRefs ts = dense_list(host_grads, seed_grads);
  const NormPlan plan =
      cached_norm_plan(ts, device, kNormChunk, /*split_alignment=*/false, "kasmina::gradient_stats");
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
