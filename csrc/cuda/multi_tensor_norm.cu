// kasmina::foreach_norm and kasmina::gradient_stats on CUDA: the launchers.
// The math and the work split are described with the kernels, in
// multi_tensor_norm_kernels.cuh; the chunk table in ../chunk_table.h.
// Launches per call with one dtype: foreach_norm two (the chunk sums, then
// the per-tensor norms), gradient_stats one (its last block writes the four
// stats); a list that mixes dtypes adds one chunk launch per further dtype.
// Partials and counter come from the stream's scratch (../stream_scratch.h).
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
#include "../stream_scratch.h"
#include "multi_tensor_norm_kernels.cuh"

namespace kasmina {
namespace {

constexpr int kThreads = kNormThreads;
constexpr int64_t kMaxGrid = 65535 * 8;

// Launches the chunk sums of every dtype group into `partial`; with `stats`,
// the last group's launch also writes the four gradient stats (one extra
// launch when the list has no chunks at all).
void chunk_sums(const NormPlan& plan, double* partial, cudaStream_t stream, const StatsArgs* stats) {
  if (stats != nullptr && plan.groups.empty()) {
    sumsq_chunks_kernel<float, true><<<1, kThreads, 0, stream>>>(nullptr, 0, partial, *stats);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  for (size_t gi = 0; gi < plan.groups.size(); ++gi) {
    const NormPlan::Group& group = plan.groups[gi];
    const int64_t chunks = group.n_chunks;
    const int64_t* table = group.table.const_data_ptr<int64_t>();
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(chunks, kMaxGrid));
    const bool finalize = stats != nullptr && gi + 1 == plan.groups.size();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, group.dtype, "kasmina_sumsq_cuda", [&] {
      if (finalize) {
        sumsq_chunks_kernel<scalar_t, true><<<grid, kThreads, 0, stream>>>(table, chunks, partial, *stats);
      } else {
        sumsq_chunks_kernel<scalar_t, false><<<grid, kThreads, 0, stream>>>(table, chunks, partial, StatsArgs{});
      }
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// The partials (and, for gradient_stats, the counter) from the stream's
// scratch: no allocation and no memset per call (../stream_scratch.h).
CounterScratch norm_scratch(const NormPlan& plan, const at::Device& device, int64_t counters, bool capturing) {
  return counter_scratch(device, counters,
                         std::max<int64_t>(plan.n_partials, 1) * static_cast<int64_t>(sizeof(double)), capturing);
}

}  // namespace

at::Tensor foreach_norm_cuda(at::TensorList tensors) {
  check_foreach_norm_args(tensors);
  const at::Device device = tensors[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const int64_t n = static_cast<int64_t>(tensors.size());
  at::Tensor out = at::empty({n}, at::TensorOptions().dtype(at::kFloat).device(device));
  const TensorRefs ts = dense_list(tensors);
  const bool capturing = stream_is_capturing(device);  // (asked once, for the plan and the scratch)
  const NormPlan plan =
      cached_norm_plan(ts, device, kNormChunk, "kasmina::foreach_norm", capturing);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const CounterScratch scratch = norm_scratch(plan, device, 0, capturing);
  double* partial = static_cast<double*>(scratch.partials);
  chunk_sums(plan, partial, stream, nullptr);
  norms_finalize_kernel<<<static_cast<unsigned>(std::min<int64_t>(n, kMaxGrid)), kThreads, 0, stream>>>(
      partial, plan.first.const_data_ptr<int64_t>(), plan.count.const_data_ptr<int64_t>(),
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
  const bool capturing = stream_is_capturing(device);  // (asked once, for the plan and the scratch)
  const NormPlan plan =
      cached_norm_plan(ts, device, kNormChunk, "kasmina::gradient_stats", capturing);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const CounterScratch scratch = norm_scratch(plan, device, 1, capturing);
  StatsArgs stats;
  stats.counter = scratch.counters;
  stats.host_slots = plan.host_first[host_grads.size()];
  stats.n_slots = plan.n_partials;
  stats.host_params = host_params;
  stats.seed_params = seed_params;
  stats.out = out.mutable_data_ptr<float>();
  chunk_sums(plan, static_cast<double*>(scratch.partials), stream, &stats);
  return out;
}

}  // namespace kasmina

TORCH_LIBRARY_IMPL(kasmina, CUDA, m) {
  m.impl("foreach_norm", &kasmina::foreach_norm_cuda);
  m.impl("gradient_stats", &kasmina::gradient_stats_cuda);
}
