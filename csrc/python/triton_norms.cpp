// kasmina::triton_foreach_norm and kasmina::triton_gradient_stats: the Triton
// backend's norm ops, with their host work in C++.
//
// The kernels are Triton (triton_kernels/norms.py) and are launched from
// Python, but everything a call does per tensor happens here: the argument
// checks (checks.h, the same messages as every backend), the dense copies of
// non-dense views, and the cached chunk table (norm_plan.h, grouped by dtype
// and 16-byte alignment, which the Triton kernel specialises on). Python then
// receives a handful of objects: the groups' tables, the partials and the
// output. As a Python custom op the same call spent about 0.6 ms of host time
// on a 1000-tensor list (checks, signature, list conversion; bench/RESULTS.md).
//
// kasmina_fast/ops/triton_ops.py registers the launcher and the chunk size
// (set_triton_norm_launcher) when it imports; until then these kernels raise.
// They run on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1.
#include <torch/extension.h>

#include <string>
#include <vector>

#include "../checks.h"
#include "../norm_plan.h"
#include "with_gil.h"

namespace kasmina {
namespace {

struct Launcher {
  // Python callables (registered by kasmina_fast/ops/triton_ops.py):
  //   norms(groups, partial, first, count, out)
  //   stats(groups, partial, host_slots, n_slots, host_params, seed_params, out)
  // groups: [(dtype name, aligned, n_chunks, table [4, n_chunks] int64)], one launch each.
  pybind11::object norms, stats;
  int64_t chunk = 0;  // elements per chunk (the Triton kernel's BLOCK); 0: not registered
};

// Leaked on purpose: destroying Python objects at process exit, after the
// interpreter is gone, would crash.
Launcher& launcher() {
  static Launcher* l = new Launcher();
  return *l;
}

void check_registered(const char* op) {
  TORCH_CHECK(launcher().chunk > 0, op,
              ": the Triton launcher is not registered (kasmina_fast.ops.triton_ops registers it on import)");
}

pybind11::list groups_of(const NormPlan& plan) {
  pybind11::list groups;
  for (const NormPlan::Group& g : plan.groups) {
    groups.append(pybind11::make_tuple(dtype_name(g.dtype), g.aligned, g.n_chunks, g.table));
  }
  return groups;
}

at::Tensor triton_foreach_norm(at::TensorList tensors) {
  const char* op = "kasmina::triton_foreach_norm";
  check_foreach_norm_args(tensors);
  check_registered(op);
  const at::Device device = tensors[0].device();
  c10::OptionalDeviceGuard guard;
  if (device.is_cuda()) guard.reset_device(device);
  const TensorRefs ts = dense_list(tensors);  // (alive until the kernels are launched)
  const NormPlan plan = cached_norm_plan(ts, device, launcher().chunk, /*split_alignment=*/true, op);
  const at::Tensor partial = norm_partials(plan, device);
  at::Tensor out =
      at::empty({static_cast<int64_t>(tensors.size())}, at::TensorOptions().dtype(at::kFloat).device(device));
  with_gil(op, [&] { launcher().norms(groups_of(plan), partial, plan.first, plan.count, out); });
  return out;
}

at::Tensor triton_gradient_stats(at::TensorList host_grads, at::TensorList seed_grads, int64_t host_params,
                                 int64_t seed_params) {
  const char* op = "kasmina::triton_gradient_stats";
  check_gradient_stats_args(host_grads, seed_grads, host_params, seed_params);
  check_registered(op);
  const at::Device device = *first_device(host_grads, seed_grads);
  c10::OptionalDeviceGuard guard;
  if (device.is_cuda()) guard.reset_device(device);
  const TensorRefs ts = dense_list(host_grads, seed_grads);  // (alive until the launch)
  const NormPlan plan = cached_norm_plan(ts, device, launcher().chunk, /*split_alignment=*/true, op);
  const at::Tensor partial = norm_partials(plan, device);
  at::Tensor out = at::empty({4}, at::TensorOptions().dtype(at::kFloat).device(device));
  const int64_t host_slots = plan.host_first[host_grads.size()];
  with_gil(op, [&] {
    launcher().stats(groups_of(plan), partial, host_slots, plan.n_partials, host_params, seed_params, out);
  });
  return out;
}

}  // namespace

void set_triton_norm_launcher(int64_t chunk, pybind11::object norms, pybind11::object stats) {
  TORCH_CHECK_VALUE(chunk > 0, "set_triton_norm_launcher: chunk must be > 0, got ", chunk);
  Launcher& l = launcher();
  l.norms = std::move(norms);
  l.stats = std::move(stats);
  l.chunk = chunk;
}

namespace {

// the same kernels for CPU (TRITON_INTERPRET=1) and CUDA tensors
void register_kernels(torch::Library& m) {
  m.impl("triton_foreach_norm", &triton_foreach_norm);
  m.impl("triton_gradient_stats", &triton_gradient_stats);
}

}  // namespace
}  // namespace kasmina

TORCH_LIBRARY_IMPL(kasmina, CPU, m) { kasmina::register_kernels(m); }
TORCH_LIBRARY_IMPL(kasmina, CUDA, m) { kasmina::register_kernels(m); }
