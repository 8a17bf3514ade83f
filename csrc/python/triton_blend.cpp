// kasmina::triton_blend, triton_blend_backward and triton_ste: the Triton
// backend's blend and STE kernels, with their host work in C++.
//
// The math, memory traffic and launch layout are with the kernels
// (triton_kernels/blend.py). What a call does besides launching happens here,
// as in the CUDA launchers: the argument checks (checks.h, the messages of
// every backend), the dense-block test (layout.h), the outputs, alpha in the
// accumulation dtype, and the strided fallback for layouts the kernels do not
// walk. Python is entered once per call, with the GIL, to launch
// (launch_forward / launch_backward / launch_copy). As Python kernels of the
// C++ ops, the same work took a boxed call into Python plus the checks and the
// layout test in Python (bench/RESULTS.md has the host times).
//
// kasmina_fast/ops/triton_ops.py registers the launchers on import
// (set_triton_blend_launcher); until then these kernels raise. They run on
// CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1.
#include <torch/extension.h>

#include <array>
#include <tuple>

#include "../checks.h"
#include "../layout.h"
#include "with_gil.h"

namespace kasmina {
namespace {

struct BlendLauncher {
  // forward(host, seed, out, a, B, N); backward(grad, host, seed, d_host,
  // d_seed, d_alpha, a, mask, B, N); copy(src, out)
  pybind11::object forward, backward, copy;
  bool registered = false;
};

// Leaked on purpose, like the norm launcher: Python objects must not be
// destroyed after the interpreter at exit.
BlendLauncher& launcher() {
  static BlendLauncher* l = new BlendLauncher();
  return *l;
}

// Calls the launcher with the GIL (with_gil.h): `call(launcher)`.
template <typename F>
void launch(const char* op, const at::Device& device, F&& call) {
  TORCH_CHECK(launcher().registered, op,
              ": the Triton launcher is not registered (kasmina_fast.ops.triton_ops registers it on import)");
  c10::OptionalDeviceGuard guard;
  if (device.is_cuda()) guard.reset_device(device);
  with_gil(op, [&] { call(launcher()); });
}

at::Tensor triton_blend(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha) {
  check_blend_args(host, seed, alpha, "kasmina::blend");
  at::Tensor out = at::empty_like(host);
  const Blocks blk = dense_blocks(host, alpha.dim() > 0, {&seed, &out});
  if (!blk.dense) return blend_fallback(host, seed, alpha, out);
  if (host.numel() == 0) return out;
  const at::Tensor a = alpha_acc(alpha, host);
  launch("kasmina::triton_blend", host.device(), [&](BlendLauncher& l) { l.forward(host, seed, out, a, blk.B, blk.N); });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> triton_blend_backward(const at::Tensor& grad, const at::Tensor& host,
                                                                     const at::Tensor& seed, const at::Tensor& alpha,
                                                                     std::array<bool, 3> mask) {
  const BlendBackwardPlan plan = plan_blend_backward(grad, host, seed, alpha, mask);
  if (plan.done) return plan.outputs();
  const at::Tensor a = alpha_acc(alpha, host);
  launch("kasmina::triton_blend_backward", host.device(), [&](BlendLauncher& l) {
    l.backward(grad, host, seed, plan.d_host, plan.d_seed, plan.d_alpha, a,
               pybind11::make_tuple(mask[0], mask[1], mask[2]), plan.blocks.B, plan.blocks.N);
  });
  return plan.outputs();
}

at::Tensor triton_ste(const at::Tensor& host, const at::Tensor& seed) {
  check_pair(host, seed, "kasmina::ste");
  if (host.numel() == 0 || !host.is_non_overlapping_and_dense()) return host.clone(at::MemoryFormat::Preserve);
  at::Tensor out = at::empty_like(host);
  launch("kasmina::triton_ste", host.device(), [&](BlendLauncher& l) { l.copy(host, out); });
  return out;
}

}  // namespace

void set_triton_blend_launcher(pybind11::object forward, pybind11::object backward, pybind11::object copy) {
  BlendLauncher& l = launcher();
  l.forward = std::move(forward);
  l.backward = std::move(backward);
  l.copy = std::move(copy);
  l.registered = true;
}

namespace {

// the same kernels for CPU (TRITON_INTERPRET=1) and CUDA tensors
void register_kernels(torch::Library& m) {
  m.impl("triton_blend", &triton_blend);
  m.impl("triton_blend_backward", &triton_blend_backward);
  m.impl("triton_ste", &triton_ste);
}

}  // namespace
}  // namespace kasmina

TORCH_LIBRARY_IMPL(kasmina, CPU, m) { kasmina::register_kernels(m); }
TORCH_LIBRARY_IMPL(kasmina, CUDA, m) { kasmina::register_kernels(m); }
