// The `kasmina` op library: the seven public schemas, the CPU kernels and the
// C++ autograd.
//
// torch.ops.kasmina holds these ops and no others: blend, blend_backward
// (blend's fused backward, called by blend's autograd and visible in traced
// backward graphs), valve, valve_backward (the same pair for the valve blend),
// ste, foreach_norm and gradient_stats. Which kernel runs is
// the dispatcher's choice: the CPU key runs the C++ kernels (csrc/cpu), the
// CUDA key the CUDA C++ kernels (csrc/cuda, when built). The Triton kernels
// are registered from Python at the key they serve, over these, while the
// Triton backend is selected (kasmina_fast/backends.py); a traced graph
// therefore names only the public ops, whatever ran at trace time.
//
// Registration and autograd live in C++ so that an eager call costs about
// what a native op costs (no Python on the call path). The fake (meta)
// kernels are Python: kasmina_fast/ops/registration.py, named below.
#include <torch/autograd.h>
#include <torch/library.h>

#include "checks.h"

namespace kasmina {

at::Tensor blend_cpu(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha);
std::tuple<at::Tensor, at::Tensor, at::Tensor> blend_backward_cpu(const at::Tensor& grad, const at::Tensor& host,
                                                                  const at::Tensor& seed, const at::Tensor& alpha,
                                                                  std::array<bool, 3> output_mask);
at::Tensor valve_cpu(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha, bool isolate);
std::tuple<at::Tensor, at::Tensor, at::Tensor> valve_backward_cpu(const at::Tensor& grad, const at::Tensor& host,
                                                                  const at::Tensor& seed, const at::Tensor& alpha,
                                                                  bool isolate, std::array<bool, 3> output_mask);
at::Tensor ste_kernel(const at::Tensor& host, const at::Tensor& seed);
at::Tensor foreach_norm_cpu(at::TensorList tensors);
at::Tensor gradient_stats_cpu(at::TensorList host_grads, at::TensorList seed_grads, int64_t host_params,
                              int64_t seed_params);

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

const auto& blend_op() {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>("kasmina::blend");
  return op;
}

const auto& blend_backward_op() {
  static const auto op =
      find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                             const at::Tensor&, std::array<bool, 3>)>(
          "kasmina::blend_backward");
  return op;
}

const auto& valve_op() {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>("kasmina::valve");
  return op;
}

const auto& valve_backward_op() {
  static const auto op =
      find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                             const at::Tensor&, bool, std::array<bool, 3>)>(
          "kasmina::valve_backward");
  return op;
}

const auto& ste_op() {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("kasmina::ste");
  return op;
}

// blend: saves alpha always, host and seed only when d_alpha may be needed
// (d_host and d_seed need only g and alpha).
class BlendFunction : public torch::autograd::Function<BlendFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& host, const at::Tensor& seed,
                            const at::Tensor& alpha) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = blend_op().call(host, seed, alpha);
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
    auto [d_host, d_seed, d_alpha] = blend_backward_op().call(g, host, seed, saved[2], mask);
    return {mask[0] ? d_host : at::Tensor(), mask[1] ? d_seed : at::Tensor(), mask[2] ? d_alpha : at::Tensor()};
  }
};

// valve: every gradient reads host and seed (t = tanh(seed - host)); saves
// host, seed and alpha, and isolate (whether the seed's input was detached).
class ValveFunction : public torch::autograd::Function<ValveFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& host, const at::Tensor& seed,
                            const at::Tensor& alpha, bool isolate) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = valve_op().call(host, seed, alpha, isolate);
    ctx->save_for_backward({host, seed, alpha});
    ctx->saved_data["isolate"] = isolate;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
    auto [d_host, d_seed, d_alpha] =
        valve_backward_op().call(grads[0], saved[0], saved[1], saved[2], ctx->saved_data["isolate"].toBool(), mask);
    return {mask[0] ? d_host : at::Tensor(), mask[1] ? d_seed : at::Tensor(), mask[2] ? d_alpha : at::Tensor(),
            at::Tensor()};
  }
};

// ste: value = host, both inputs receive g unchanged (no kernel in backward).
class SteFunction : public torch::autograd::Function<SteFunction> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& host, const at::Tensor& seed) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return ste_op().call(host, seed);
  }

  static variable_list backward(AutogradContext*, variable_list grads) { return {grads[0], grads[0]}; }
};

at::Tensor blend_autograd(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha) {
  return BlendFunction::apply(host, seed, alpha);
}

at::Tensor valve_autograd(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha, bool isolate) {
  return ValveFunction::apply(host, seed, alpha, isolate);
}

at::Tensor ste_autograd(const at::Tensor& host, const at::Tensor& seed) { return SteFunction::apply(host, seed); }

// The list ops with empty lists have no tensor to dispatch on: this kernel
// (CompositeExplicitAutograd, reached for the Undefined key and for devices
// with no kernel of their own) answers the empty case and refuses the rest.
void refuse_device(const char* op, at::TensorList a, at::TensorList b) {
  const at::Tensor& t = a.empty() ? b[0] : a[0];
  TORCH_CHECK_NOT_IMPLEMENTED(false, op, ": no kernel for ", t.device().str(), " tensors in this build");
}

at::Tensor foreach_norm_empty(at::TensorList tensors) {
  if (!tensors.empty()) refuse_device("kasmina::foreach_norm", tensors, {});
  return foreach_norm_cpu(tensors);
}

at::Tensor gradient_stats_empty(at::TensorList host_grads, at::TensorList seed_grads, int64_t host_params,
                                int64_t seed_params) {
  if (!host_grads.empty() || !seed_grads.empty()) refuse_device("kasmina::gradient_stats", host_grads, seed_grads);
  return gradient_stats_cpu(host_grads, seed_grads, host_params, seed_params);
}

// The norms are telemetry, not differentiable: their Autograd kernels only
// step below autograd. (Without them the dispatcher's boxed autograd fallback
// would box every tensor of the lists into IValues and back.)
at::Tensor foreach_norm_autograd(at::TensorList tensors) {
  static const auto op = find_op<at::Tensor(at::TensorList)>("kasmina::foreach_norm");
  const at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(tensors);
}

at::Tensor gradient_stats_autograd(at::TensorList host_grads, at::TensorList seed_grads, int64_t host_params,
                                   int64_t seed_params) {
  static const auto op =
      find_op<at::Tensor(at::TensorList, at::TensorList, int64_t, int64_t)>("kasmina::gradient_stats");
  const at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(host_grads, seed_grads, host_params, seed_params);
}

}  // namespace
}  // namespace kasmina

TORCH_LIBRARY(kasmina, m) {
  m.set_python_module("kasmina_fast.ops.registration");
  m.def("blend(Tensor host, Tensor seed, Tensor alpha) -> Tensor");
  m.def(
      "blend_backward(Tensor grad, Tensor host, Tensor seed, Tensor alpha, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  // valve: host * (1 + clamp(alpha, 0, 1) * tanh(seed - host)); isolate: the
  // seed's input was the host detached (the backward then drops d_host's term
  // through seed - host)
  m.def("valve(Tensor host, Tensor seed, Tensor alpha, bool isolate=False) -> Tensor");
  m.def(
      "valve_backward(Tensor grad, Tensor host, Tensor seed, Tensor alpha, bool isolate, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("ste(Tensor host, Tensor seed) -> Tensor");
  // cudagraph_unsafe: on CUDA the norm kernels read a chunk table cached by the
  // tensors' addresses (norm_plan.h), which a capture can use only when a call
  // before it made the table; torch.compile's CUDA graphs record with inputs at
  // new addresses, so Inductor must run these ops outside its graphs.
  const std::vector<at::Tag> unsafe = {at::Tag::cudagraph_unsafe};
  m.def("foreach_norm(Tensor[] tensors) -> Tensor", unsafe);
  m.def("gradient_stats(Tensor[] host_grads, Tensor[] seed_grads, int host_params, int seed_params) -> Tensor",
        unsafe);
}

TORCH_LIBRARY_IMPL(kasmina, CPU, m) {
  m.impl("blend", &kasmina::blend_cpu);
  m.impl("blend_backward", &kasmina::blend_backward_cpu);
  m.impl("valve", &kasmina::valve_cpu);
  m.impl("valve_backward", &kasmina::valve_backward_cpu);
  m.impl("ste", &kasmina::ste_kernel);
  m.impl("foreach_norm", &kasmina::foreach_norm_cpu);
  m.impl("gradient_stats", &kasmina::gradient_stats_cpu);
}

#ifdef KASMINA_WITH_CUDA
// blend, valve, their backwards and the norms register their CUDA kernels in csrc/cuda.
TORCH_LIBRARY_IMPL(kasmina, CUDA, m) { m.impl("ste", &kasmina::ste_kernel); }
#endif

TORCH_LIBRARY_IMPL(kasmina, CompositeExplicitAutograd, m) {
  m.impl("foreach_norm", &kasmina::foreach_norm_empty);
  m.impl("gradient_stats", &kasmina::gradient_stats_empty);
}

TORCH_LIBRARY_IMPL(kasmina, Autograd, m) {
  m.impl("blend", &kasmina::blend_autograd);
  m.impl("valve", &kasmina::valve_autograd);
  m.impl("ste", &kasmina::ste_autograd);
  m.impl("foreach_norm", &kasmina::foreach_norm_autograd);
  m.impl("gradient_stats", &kasmina::gradient_stats_autograd);
}
