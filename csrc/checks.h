// Argument validation shared by every kernel of the `kasmina` ops.
//
// The messages are part of the public contract: the Python layer
// (kasmina_fast/ops/_checks.py) raises the very same text for the Python
// kernels (Triton) and the fakes, and tests/ops/test_bad_input.py compares the
// two. Every failure is a ValueError that names the op and the argument.
#pragma once

#include <ATen/ATen.h>

#include <sstream>
#include <string>

namespace kasmina {

// Python spelling of a dtype ("float32"), so that messages read the same
// whether they come from C++ or from Python.
inline const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    case at::kComplexFloat: return "complex64";
    case at::kComplexDouble: return "complex128";
    default: return c10::toString(t);
  }
}

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline std::string shape_str(at::IntArrayRef s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

inline void check_float(const at::Tensor& t, const char* op, const std::string& arg) {
  TORCH_CHECK_VALUE(is_supported_float(t.scalar_type()), op, ": ", arg,
                    " must be float16, bfloat16, float32 or float64, got ",
                    dtype_name(t.scalar_type()));
}

// host/seed pair: same dtype (a supported float), shape and device.
inline void check_pair(const at::Tensor& host, const at::Tensor& seed, const char* op) {
  check_float(host, op, "host");
  TORCH_CHECK_VALUE(seed.scalar_type() == host.scalar_type(), op,
                    ": seed must have the dtype of host, got seed ", dtype_name(seed.scalar_type()),
                    " and host ", dtype_name(host.scalar_type()));
  TORCH_CHECK_VALUE(seed.sizes() == host.sizes(), op, ": seed must have the shape of host, got seed ",
                    shape_str(seed.sizes()), " and host ", shape_str(host.sizes()));
  TORCH_CHECK_VALUE(seed.device() == host.device(), op, ": seed must be on the device of host, got seed ",
                    seed.device().str(), " and host ", host.device().str());
}

// alpha: a supported float on host's device, 0-d or per-sample [B, 1, ..., 1].
inline void check_alpha(const at::Tensor& host, const at::Tensor& alpha, const char* op) {
  check_float(alpha, op, "alpha");
  TORCH_CHECK_VALUE(alpha.device() == host.device(), op,
                    ": alpha must be on the device of host, got alpha ", alpha.device().str(),
                    " and host ", host.device().str());
  if (alpha.dim() == 0) return;
  bool per_sample = host.dim() >= 1 && alpha.dim() == host.dim() && alpha.size(0) == host.size(0);
  for (int64_t d = 1; per_sample && d < alpha.dim(); ++d) per_sample = alpha.size(d) == 1;
  TORCH_CHECK_VALUE(per_sample, op, ": alpha must be 0-d or per-sample [B, 1, ..., 1] matching host ",
                    shape_str(host.sizes()), ", got alpha ", shape_str(alpha.sizes()));
}

inline void check_blend_args(const at::Tensor& host, const at::Tensor& seed, const at::Tensor& alpha,
                             const char* op) {
  check_pair(host, seed, op);
  check_alpha(host, alpha, op);
}

// The backward of blend or valve (`op` names it): the forward's arguments plus
// grad, which must match host.
inline void check_blend_backward_args(const at::Tensor& grad, const at::Tensor& host, const at::Tensor& seed,
                                      const at::Tensor& alpha, const char* op = "kasmina::blend_backward") {
  check_blend_args(host, seed, alpha, op);
  TORCH_CHECK_VALUE(grad.sizes() == host.sizes() && grad.scalar_type() == host.scalar_type() &&
                        grad.device() == host.device(),
                    op, ": grad must match host in shape, dtype and device, got grad ", shape_str(grad.sizes()), " ",
                    dtype_name(grad.scalar_type()), " and host ", shape_str(host.sizes()), " ",
                    dtype_name(host.scalar_type()));
}

// A list of gradient-like tensors: supported floats, all on `device`.
// `first` names the tensor whose device the others must share. The message
// (naming the index) is built only for the tensor that fails.
inline void check_list(at::TensorList ts, const char* op, const char* name,
                       const c10::optional<at::Device>& device, const char* first) {
  for (size_t i = 0; i < ts.size(); ++i) {
    const bool ok = is_supported_float(ts[i].scalar_type()) && (!device.has_value() || ts[i].device() == *device);
    if (ok) continue;
    const std::string arg = std::string(name) + "[" + std::to_string(i) + "]";
    check_float(ts[i], op, arg);
    TORCH_CHECK_VALUE(false, op, ": ", arg, " is on ", ts[i].device().str(), " but ", first, " is on ",
                      device->str());
  }
}

inline c10::optional<at::Device> first_device(at::TensorList a, at::TensorList b) {
  if (!a.empty()) return a[0].device();
  if (!b.empty()) return b[0].device();
  return c10::nullopt;
}

inline void check_foreach_norm_args(at::TensorList tensors) {
  check_list(tensors, "kasmina::foreach_norm", "tensors", first_device(tensors, {}), "tensors[0]");
}

inline void check_gradient_stats_args(at::TensorList host_grads, at::TensorList seed_grads, int64_t host_params,
                                      int64_t seed_params) {
  const char* op = "kasmina::gradient_stats";
  TORCH_CHECK_VALUE(host_params >= 0, op, ": host_params must be >= 0, got ", host_params);
  TORCH_CHECK_VALUE(seed_params >= 0, op, ": seed_params must be >= 0, got ", seed_params);
  const auto dev = first_device(host_grads, seed_grads);
  const char* first = host_grads.empty() ? "seed_grads[0]" : "host_grads[0]";
  check_list(host_grads, op, "host_grads", dev, first);
  check_list(seed_grads, op, "seed_grads", dev, first);
}

}  // namespace kasmina
