// kasmina_fast._C.foreach_norm_list / gradient_stats_list: the list ops
// called with Python lists of plain tensors, read here.
//
// A torch.ops call converts a Python list of tensors element by element
// (about 85 ns a tensor on 2 CPU cores: 85 us for a 1000-tensor list, more
// than the whole 60 us budget of such a call on a GPU). Reading the list here
// costs a few ns a tensor; the op is then called through the dispatcher, so
// its kernels (and checks) run exactly as from Python. Only exact
// torch.Tensor elements qualify: anything else (a subclass, a non-tensor)
// returns None and kasmina_fast.ops.norms takes the torch.ops route, which
// handles __torch_function__ and raises the usual errors. Not used under
// torch.compile (the wrapper checks), where the op is traced as usual.
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <vector>

namespace kasmina {
namespace {

using ForeachNorm = c10::TypedOperatorHandle<at::Tensor(at::TensorList)>;
using GradientStats = c10::TypedOperatorHandle<at::Tensor(at::TensorList, at::TensorList, int64_t, int64_t)>;

template <typename Handle, typename Sig>
Handle find(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// False (and nothing kept) when an element is not exactly a torch.Tensor.
bool plain_tensors(const pybind11::list& list, std::vector<at::Tensor>& out) {
  const auto* tensor_type = reinterpret_cast<PyTypeObject*>(THPVariableClass);
  out.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    PyObject* obj = PyList_GET_ITEM(list.ptr(), static_cast<Py_ssize_t>(i));
    if (Py_TYPE(obj) != tensor_type) {
      out.clear();
      return false;
    }
    out.push_back(THPVariable_Unpack(obj));
  }
  return true;
}

}  // namespace

pybind11::object foreach_norm_list(const pybind11::list& tensors, bool triton) {
  static const auto native = find<ForeachNorm, at::Tensor(at::TensorList)>("kasmina::foreach_norm");
  static const auto triton_op = find<ForeachNorm, at::Tensor(at::TensorList)>("kasmina::triton_foreach_norm");
  std::vector<at::Tensor> ts;
  if (!plain_tensors(tensors, ts)) return pybind11::none();
  at::Tensor out;
  {
    pybind11::gil_scoped_release no_gil;  // (the Triton kernel takes it back to launch)
    out = (triton ? triton_op : native).call(ts);
  }
  return pybind11::cast(out);
}

pybind11::object gradient_stats_list(const pybind11::list& host_grads, const pybind11::list& seed_grads,
                                     int64_t host_params, int64_t seed_params, bool triton) {
  using Sig = at::Tensor(at::TensorList, at::TensorList, int64_t, int64_t);
  static const auto native = find<GradientStats, Sig>("kasmina::gradient_stats");
  static const auto triton_op = find<GradientStats, Sig>("kasmina::triton_gradient_stats");
  std::vector<at::Tensor> host, seed;
  if (!plain_tensors(host_grads, host) || !plain_tensors(seed_grads, seed)) return pybind11::none();
  at::Tensor out;
  {
    pybind11::gil_scoped_release no_gil;
    out = (triton ? triton_op : native).call(host, seed, host_params, seed_params);
  }
  return pybind11::cast(out);
}

}  // namespace kasmina
