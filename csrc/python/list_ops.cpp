// kasmina_fast._C.foreach_norm_list / gradient_stats_list: the list ops
// called with Python lists of plain tensors, read here.
//
// A torch.ops call converts a Python list of tensors element by element
// (about 85 ns a tensor on 2 CPU cores: 85 us for a 1000-tensor list, more
// than the whole 60 us budget of such a call on a GPU). Reading the list here
// costs a few ns a tensor (no reference count is taken: tensor_refs.h); the
// op is then called through the dispatcher, so its kernels (and checks) run
// exactly as from Python. Only exact
// torch.Tensor elements qualify: anything else (a subclass, a non-tensor)
// returns None and kasmina_fast.ops.norms takes the torch.ops route, which
// handles __torch_function__ and raises the usual errors. Not used under
// torch.compile or a TorchFunctionMode (the wrapper checks), where the op is
// traced, or seen by the mode, as usual.
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include "../tensor_refs.h"

namespace kasmina {
namespace {

using ForeachNorm = c10::TypedOperatorHandle<at::Tensor(at::TensorList)>;
using GradientStats = c10::TypedOperatorHandle<at::Tensor(at::TensorList, at::TensorList, int64_t, int64_t)>;

template <typename Handle, typename Sig>
Handle find(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// The elements of `list` as borrowed tensors (tensor_refs.h), pinned by
// `pinned`, a tuple of the same objects: the GIL is released during the op,
// and another thread could empty the list meanwhile. False (and nothing kept)
// when an element is not exactly a torch.Tensor.
bool plain_tensors(const pybind11::list& list, pybind11::tuple& pinned, TensorRefs& out) {
  const auto* tensor_type = reinterpret_cast<PyTypeObject*>(THPVariableClass);
  pinned = pybind11::reinterpret_steal<pybind11::tuple>(PyList_AsTuple(list.ptr()));
  if (!pinned) throw pybind11::error_already_set();
  const Py_ssize_t n = PyTuple_GET_SIZE(pinned.ptr());
  out.reserve(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* obj = PyTuple_GET_ITEM(pinned.ptr(), i);
    if (Py_TYPE(obj) != tensor_type) {
      out.clear();
      return false;
    }
    out.borrow(THPVariable_Unpack(obj));
  }
  return true;
}

}  // namespace

pybind11::object foreach_norm_list(const pybind11::list& tensors, bool triton) {
  static const auto native = find<ForeachNorm, at::Tensor(at::TensorList)>("kasmina::foreach_norm");
  static const auto triton_op = find<ForeachNorm, at::Tensor(at::TensorList)>("kasmina::triton_foreach_norm");
  pybind11::tuple pinned;
  TensorRefs ts;
  if (!plain_tensors(tensors, pinned, ts)) return pybind11::none();
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
  pybind11::tuple host_pinned, seed_pinned;
  TensorRefs host, seed;
  if (!plain_tensors(host_grads, host_pinned, host) || !plain_tensors(seed_grads, seed_pinned, seed)) {
    return pybind11::none();
  }
  at::Tensor out;
  {
    pybind11::gil_scoped_release no_gil;
    out = (triton ? triton_op : native).call(host, seed, host_params, seed_params);
  }
  return pybind11::cast(out);
}

}  // namespace kasmina
