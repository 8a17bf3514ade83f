// The `kasmina` op library: schemas, CPU kernels and C++ autograd.
//
// Registration and autograd live in C++ so that an eager call costs about
// what a native op costs (no Python on the call path, no Python autograd
// Function). Fake (meta) kernels are Python (kasmina_fast/ops/registration.py,
// named below with set_python_module) and so are the Triton kernels, which
// are registered as the CPU/CUDA kernels of the triton_* ops defined here.
// The schemas here and in kasmina_fast/ops/schemas.py must stay identical;
// tests/ops/test_registration.py compares them (the triton_* ones against the
// custom ops of the no-extension path: tests/ops/test_triton_ops.py).
#include <torch/autograd.h>
#include <torch/library.h>

#include "checks.h"

namespace kasmina {

at::Tensor blend_cpu(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha);
std::tuple<at::Tensor, at::Tensor, at::Tensor> blend_backward_cpu(const at::Tensor& grad, const at::Tensor& host,
                                                                  const at::Tensor& seed, const at::Tensor& alpha,
                                                                  std::array<bool, 3> output_mask);
at::Tensor ste_kernel(const at::Tensor& host, const at::Tensor& seed);
at::Tensor foreach_norm_cpu(at::TensorList tensors);
at::Tensor gradient_stats_cpu(at::TensorList host_grads, at::TensorList seed_grads, int64_t host_params,
                              int64_t seed_params);

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using BlendSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);
using BlendBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                        const at::Tensor&, const at::Tensor&,
                                                                        std::array<bool, 3>);
using SteSig = at::Tensor(const at::Tensor&, const at::Tensor&);

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// The two families of blend/STE ops that share the C++ autograd below: the
// C++/CUDA kernels (kasmina::blend, ...) and the Triton kernels, whose
// CPU/CUDA kernels are Python (kasmina::triton_blend, ... registered by
// kasmina_fast/ops/triton_ops.py). Autograd in C++ for both keeps the Python
// autograd.Function of a custom_op off the Triton call path.
template <const char* Blend, const char* BlendBackward, const char* Ste>
struct OpFamily {
  static const c10::TypedOperatorHandle<BlendSig>& blend() {
    static const auto op = find_op<BlendSig>(Blend);
    return op;
  }
  static const c10::TypedOperatorHandle<BlendBackwardSig>& blend_backward() {
    static const auto op = find_op<BlendBackwardSig>(BlendBackward);
    return op;
  }
  static const c10::TypedOperatorHandle<SteSig>& ste() {
    static const auto op = find_op<SteSig>(Ste);
    return op;
  }
};

constexpr char kBlend[] = "kasmina::blend";
constexpr char kBlendBackward[] = "kasmina::blend_backward";
constexpr char kSte[] = "kasmina::ste";
constexpr char kTritonBlend[] = "kasmina::triton_blend";
constexpr char kTritonBlendBackward[] = "kasmina::triton_blend_backward";
constexpr char kTritonSte[] = "kasmina::triton_ste";
using NativeOps = OpFamily<kBlend, kBlendBackward, kSte>;
using TritonOps = OpFamily<kTritonBlend, kTritonBlendBackward, kTritonSte>;

// blend: saves alpha always, host and seed only when d_alpha may be needed
// (d_host and d_seed need only g and alpha).
template <typename Ops>
class BlendFunction : public torch::autograd::Function<BlendFunction<Ops>> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& host, const at::Tensor& seed,
                            const at::Tensor& alpha) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = Ops::blend().call(host, seed, alpha);
    if (alpha.requires_grad()) {
      ctx->save_for_backward({host, seed, alpha});
    } else {
      ctx->save_for_backward({at::Tensor(), at::Tensor(), alpha});
    }
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
    const at::Tensor& g = grads[0];
    // When d_alpha is not wanted the kernel never reads host or seed; g stands
    // in for them (same shape, dtype and device) to satisfy the checks.
    const at::Tensor& host = saved[0].defined() ? saved[0] : g;
    const at::Tensor& seed = saved[1].defined() ? saved[1] : g;
    auto [d_host, d_seed, d_alpha] = Ops::blend_backward().call(g, host, seed, saved[2], mask);
    return {mask[0] ? d_host : at::Tensor(), mask[1] ? d_seed : at::Tensor(), mask[2] ? d_alpha : at::Tensor()};
  }
};

// ste: value = host, both inputs receive g unchanged (no kernel in backward).
template <typename Ops>
class SteFunction : public torch::autograd::Function<SteFunction<Ops>> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& host, const at::Tensor& seed) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return Ops::ste().call(host, seed);
  }

  static variable_list backward(AutogradContext*, variable_list grads) { return {grads[0], grads[0]}; }
};

// The list ops (kasmina::foreach_norm, kasmina::gradient_stats and their
// triton_* twins, named by the template argument).
constexpr char kForeachNorm[] = "kasmina::foreach_norm";
constexpr char kGradientStats[] = "kasmina::gradient_stats";
constexpr char kTritonForeachNorm[] = "kasmina::triton_foreach_norm";
constexpr char kTritonGradientStats[] = "kasmina::triton_gradient_stats";
using ForeachNormSig = at::Tensor(at::TensorList);
using GradientStatsSig = at::Tensor(at::TensorList, at::TensorList, int64_t, int64_t);

// With empty lists they have no tensor to dispatch on: this kernel
// (CompositeExplicitAutograd, reached for the Undefined key and for devices
// with no kernel of their own) answers the empty case and refuses the rest.
void refuse_device(const char* op, at::TensorList a, at::TensorList b) {
  const at::Tensor& t = a.empty() ? b[0] : a[0];
  TORCH_CHECK_NOT_IMPLEMENTED(false, op, ": no kernel for ", t.device().str(), " tensors in this build");
}

template <const char* Op>
at::Tensor foreach_norm_empty(at::TensorList tensors) {
  if (!tensors.empty()) refuse_device(Op, tensors, {});
  return foreach_norm_cpu(tensors);
}

template <const char* Op>
at::Tensor gradient_stats_empty(at::TensorList host_grads, at::TensorList seed_grads, int64_t host_params,
                                int64_t seed_params) {
  if (!host_grads.empty() || !seed_grads.empty()) refuse_device(Op, host_grads, seed_grads);
  return gradient_stats_cpu(host_grads, seed_grads, host_params, seed_params);
}

// The norms are telemetry, not differentiable: their Autograd kernels only
// step below autograd. (Without them the dispatcher's boxed autograd fallback
// would box every tensor of the lists into IValues and back, ~50 ns each.)
template <const char* Op>
at::Tensor foreach_norm_autograd(at::TensorList tensors) {
  static const auto op = find_op<ForeachNormSig>(Op);
  const at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(tensors);
}

template <const char* Op>
at::Tensor gradient_stats_autograd(at::TensorList host_grads, at::TensorList seed_grads, int64_t host_params,
                                   int64_t seed_params) {
  static const auto op = find_op<GradientStatsSig>(Op);
  const at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(host_grads, seed_grads, host_params, seed_params);
}

template <typename Ops>
at::Tensor blend_autograd(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha) {
  return BlendFunction<Ops>::apply(host, seed, alpha);
}

template <typename Ops>
at::Tensor ste_autograd(const at::Tensor& host, const at::Tensor& seed) {
  return SteFunction<Ops>::apply(host, seed);
}

}  // namespace
}  // namespace kasmina

TORCH_LIBRARY(kasmina, m) {
  m.set_python_module("kasmina_fast.ops.registration");
  m.def("blend(Tensor host, Tensor seed, Tensor alpha) -> Tensor");
  m.def(
      "blend_backward(Tensor grad, Tensor host, Tensor seed, Tensor alpha, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("ste(Tensor host, Tensor seed) -> Tensor");
  // the norm ops: cudagraph_unsafe for Inductor (kasmina_fast/ops/schemas.py: CUDAGRAPH_UNSAFE)
  const std::vector<at::Tag> unsafe = {at::Tag::cudagraph_unsafe};
  m.def("foreach_norm(Tensor[] tensors) -> Tensor", unsafe);
  m.def("gradient_stats(Tensor[] host_grads, Tensor[] seed_grads, int host_params, int seed_params) -> Tensor",
        unsafe);
  // the Triton backend's ops: kernels registered from Python (kasmina_fast/ops/triton_ops.py)
  m.def("triton_blend(Tensor host, Tensor seed, Tensor alpha) -> Tensor");
  m.def(
      "triton_blend_backward(Tensor grad, Tensor host, Tensor seed, Tensor alpha, bool[] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("triton_ste(Tensor host, Tensor seed) -> Tensor");
  // (their CPU/CUDA kernels: csrc/python/triton_norms.cpp, which calls the Python launcher)
  m.def("triton_foreach_norm(Tensor[] tensors) -> Tensor", unsafe);
  m.def(
      "triton_gradient_stats(Tensor[] host_grads, Tensor[] seed_grads, int host_params, int seed_params) -> "
      "Tensor",
      unsafe);
}

TORCH_LIBRARY_IMPL(kasmina, CPU, m) {
  m.impl("blend", &kasmina::blend_cpu);
  m.impl("blend_backward", &kasmina::blend_backward_cpu);
  m.impl("ste", &kasmina::ste_kernel);
  m.impl("foreach_norm", &kasmina::foreach_norm_cpu);
  m.impl("gradient_stats", &kasmina::gradient_stats_cpu);
}

#ifdef KASMINA_WITH_CUDA
// blend and blend_backward register their CUDA kernels in csrc/cuda/blend.cu.
TORCH_LIBRARY_IMPL(kasmina, CUDA, m) { m.impl("ste", &kasmina::ste_kernel); }
#endif

TORCH_LIBRARY_IMPL(kasmina, CompositeExplicitAutograd, m) {
  m.impl("foreach_norm", &kasmina::foreach_norm_empty<kasmina::kForeachNorm>);
  m.impl("gradient_stats", &kasmina::gradient_stats_empty<kasmina::kGradientStats>);
  m.impl("triton_foreach_norm", &kasmina::foreach_norm_empty<kasmina::kTritonForeachNorm>);
  m.impl("triton_gradient_stats", &kasmina::gradient_stats_empty<kasmina::kTritonGradientStats>);
}

TORCH_LIBRARY_IMPL(kasmina, Autograd, m) {
  m.impl("blend", &kasmina::blend_autograd<kasmina::NativeOps>);
  m.impl("ste", &kasmina::ste_autograd<kasmina::NativeOps>);
  m.impl("triton_blend", &kasmina::blend_autograd<kasmina::TritonOps>);
  m.impl("triton_ste", &kasmina::ste_autograd<kasmina::TritonOps>);
  m.impl("foreach_norm", &kasmina::foreach_norm_autograd<kasmina::kForeachNorm>);
  m.impl("gradient_stats", &kasmina::gradient_stats_autograd<kasmina::kGradientStats>);
  m.impl("triton_foreach_norm", &kasmina::foreach_norm_autograd<kasmina::kTritonForeachNorm>);
  m.impl("triton_gradient_stats", &kasmina::gradient_stats_autograd<kasmina::kTritonGradientStats>);
}
