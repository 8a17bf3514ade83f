// kasmina_fast._C.param_gradient_stats: kasmina::gradient_stats of the .grad
// of two Python lists of parameters, read in C++.
//
// The gradient telemetry of GradientIsolationMonitor checks the same
// parameters every few steps. Building two lists of .grad tensors in Python
// and handing them to torch.ops costs about 0.2 us a parameter (a list
// comprehension, then the boxed conversion of every tensor); reading the
// parameters straight from the Python lists here costs a few ns each. The
// lists are read on every call (nothing is cached), so replaced .grad tensors
// (zero_grad(set_to_none=True)) and replaced parameters are always seen.
// Parameters whose .grad is None are skipped. The op (kasmina::gradient_stats,
// or kasmina::triton_gradient_stats for the Triton backend) is called through
// the dispatcher, so its CPU or CUDA kernel runs exactly as from Python.
// The .grad tensors are copied (a reference each), not borrowed as the list
// ops borrow theirs (tensor_refs.h): nothing but the parameter holds a .grad,
// and a backward running in another thread may replace it mid-call.
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <string>
#include <vector>

namespace kasmina {
namespace {

void defined_grads(const pybind11::list& params, const char* name, std::vector<at::Tensor>& out) {
  out.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    PyObject* p = PyList_GET_ITEM(params.ptr(), static_cast<Py_ssize_t>(i));
    if (!THPVariable_Check(p)) {
      throw pybind11::type_error("kasmina_fast.param_gradient_stats: " + std::string(name) + "[" +
                                 std::to_string(i) + "] must be a tensor, got " + Py_TYPE(p)->tp_name);
    }
    const at::Tensor& grad = THPVariable_Unpack(p).grad();
    if (grad.defined()) out.push_back(grad);
  }
}

using GradientStats = c10::TypedOperatorHandle<at::Tensor(at::TensorList, at::TensorList, int64_t, int64_t)>;

GradientStats find_op(const char* name) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow(name, "")
      .typed<at::Tensor(at::TensorList, at::TensorList, int64_t, int64_t)>();
}

}  // namespace

at::Tensor param_gradient_stats(const pybind11::list& host_params, const pybind11::list& seed_params,
                                int64_t host_count, int64_t seed_count, bool triton) {
  static const GradientStats native = find_op("kasmina::gradient_stats");
  static const GradientStats triton_op = find_op("kasmina::triton_gradient_stats");
  std::vector<at::Tensor> host, seed;
  defined_grads(host_params, "host_params", host);
  defined_grads(seed_params, "seed_params", seed);
  return (triton ? triton_op : native).call(host, seed, host_count, seed_count);
}

}  // namespace kasmina
