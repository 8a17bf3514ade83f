// kasmina_fast._C.param_gradient_stats: kasmina::gradient_stats of the .grad
// of two Python lists of parameters, read in C++. The one Python function of
// the op library (which is otherwise torch.library registrations, loaded with
// torch.ops.load_library).
//
// Why it exists: GradientIsolationMonitor checks the same parameters every few
// steps. Building two lists of .grad tensors in Python and handing them to
// torch.ops costs a Python attribute read per parameter plus the boxed
// conversion of every tensor; reading the parameters straight from the lists
// here costs a few ns each. The lists are read on every call (nothing is
// cached), so replaced .grad tensors and replaced parameters are always seen;
// parameters whose .grad is None are skipped. The op is called through the
// dispatcher, so the kernel of the selected backend runs as from Python.
//
// Eager only: a pybind function is opaque to torch.compile and to a
// TorchFunctionMode, so kasmina_fast.ops.norms.param_gradient_stats calls it
// only outside both (tests/ops/test_param_gradient_stats.py checks the guard).
// The .grad tensors are held by reference (not borrowed) while the op runs: a
// backward in another thread may replace a parameter's .grad mid-call.
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

at::Tensor param_gradient_stats(const pybind11::list& host_params, const pybind11::list& seed_params,
                                int64_t host_count, int64_t seed_count) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("kasmina::gradient_stats", "")
                             .typed<at::Tensor(at::TensorList, at::TensorList, int64_t, int64_t)>();
  std::vector<at::Tensor> host, seed;
  defined_grads(host_params, "host_params", host);
  defined_grads(seed_params, "seed_params", seed);
  return op.call(host, seed, host_count, seed_count);
}

}  // namespace
}  // namespace kasmina

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "kasmina-fast's op library (torch.library registrations) and its one Python helper";
  m.def("param_gradient_stats", &kasmina::param_gradient_stats, pybind11::arg("host_params"),
        pybind11::arg("seed_params"), pybind11::arg("host_count"), pybind11::arg("seed_count"),
        "kasmina::gradient_stats of the .grad of two lists of parameters (None grads skipped); eager only.");
}
