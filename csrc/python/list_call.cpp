// kasmina_fast._C.list_call: the list ops called with Python lists read here,
// the one Python function of the op library (which is otherwise torch.library
// registrations, loaded with torch.ops.load_library).
//
//   list_call(op, first, second, host_count, seed_count, read_grads)
//     op "foreach_norm":   kasmina::foreach_norm(first)            (second None)
//     op "gradient_stats": kasmina::gradient_stats(first, second, host_count, seed_count)
//     read_grads: the lists hold parameters; their .grad are the op's tensors
//     (parameters without one skipped; anything but a tensor is a TypeError;
//     a .grad that dispatches to Python, a DTensor, returns None).
//   Lists spanning several devices return None as well.
//
// Why it exists: a torch.ops call converts a Python list of tensors element by
// element (on 2026-11-29 about 0.15-0.25 us a tensor on the 2-core VM, more
// than a whole 1000-tensor norm call should cost on a GPU); reading the list
// here costs a few ns a tensor, and no reference count is taken
// (tensor_refs.h). The op is then called through the dispatcher, so the
// kernel of the selected backend runs, checks included, as from Python.
// Without read_grads only exact torch.Tensor elements qualify: anything else
// (a subclass, a non-tensor) returns None and the caller takes the torch.ops
// route, which handles __torch_function__ and raises the usual errors.
//
// Eager only: a pybind function is opaque to torch.compile and to a
// TorchFunctionMode, so kasmina_fast/ops/norms.py calls it outside both
// (tests/ops/test_list_call.py checks the guard). The borrowed elements are
// pinned by a tuple of the same objects for the call; .grad tensors are held
// by reference, since a backward in another thread may replace one mid-call.
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <string>

#include "../tensor_refs.h"

namespace kasmina {
namespace {

// The elements of `list` as borrowed tensors, pinned by `pinned`. False (and
// nothing kept) when an element is not exactly a torch.Tensor.
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

// The defined .grad of the parameters of `list` (held: see above). False (and
// nothing kept) when a .grad is a tensor subclass that dispatches to Python
// (a DTensor of FSDP2): the caller's Python path handles those.
bool defined_grads(const pybind11::list& list, const char* name, TensorRefs& out) {
  out.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    PyObject* p = PyList_GET_ITEM(list.ptr(), static_cast<Py_ssize_t>(i));
    if (!THPVariable_Check(p)) {
      throw pybind11::type_error("kasmina_fast.param_gradient_stats: " + std::string(name) + "[" +
                                 std::to_string(i) + "] must be a tensor, got " + Py_TYPE(p)->tp_name);
    }
    const at::Tensor& grad = THPVariable_Unpack(p).grad();
    if (!grad.defined()) continue;
    if (grad.key_set().has(c10::DispatchKey::Python)) {
      out.clear();
      return false;
    }
    out.own(grad);
  }
  return true;
}

// True when every tensor of the two lists is on one device. A list that spans
// several (a model split across devices) goes back to Python, which calls the
// op once per device (kasmina_fast/ops/norms.py).
bool one_device(at::TensorList a, at::TensorList b) {
  const at::Tensor* first = !a.empty() ? &a[0] : (!b.empty() ? &b[0] : nullptr);
  if (first == nullptr) return true;
  const at::Device device = first->device();
  for (const at::Tensor& t : a) {
    if (t.device() != device) return false;
  }
  for (const at::Tensor& t : b) {
    if (t.device() != device) return false;
  }
  return true;
}

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

pybind11::object list_call(const std::string& op, const pybind11::list& first, const pybind11::object& second,
                           int64_t host_count, int64_t seed_count, bool read_grads) {
  static const auto foreach_norm = find_op<at::Tensor(at::TensorList)>("kasmina::foreach_norm");
  static const auto gradient_stats =
      find_op<at::Tensor(at::TensorList, at::TensorList, int64_t, int64_t)>("kasmina::gradient_stats");
  const bool stats = op == "gradient_stats";
  TORCH_CHECK_VALUE(stats || op == "foreach_norm", "kasmina_fast._C.list_call: unknown op '", op, "'");
  TORCH_CHECK_VALUE(stats != second.is_none(), "kasmina_fast._C.list_call: ", op,
                    stats ? " takes two lists" : " takes one list");
  pybind11::tuple first_pinned, second_pinned;
  TensorRefs a, b;
  if (read_grads) {
    if (!defined_grads(first, "host_params", a) ||
        (stats && !defined_grads(second.cast<pybind11::list>(), "seed_params", b))) {
      return pybind11::none();
    }
  } else if (!plain_tensors(first, first_pinned, a) ||
             (stats && !plain_tensors(second.cast<pybind11::list>(), second_pinned, b))) {
    return pybind11::none();
  }
  if (!one_device(a, b)) return pybind11::none();
  at::Tensor out = stats ? gradient_stats.call(a, b, host_count, seed_count) : foreach_norm.call(a);
  return pybind11::cast(std::move(out));
}

}  // namespace
}  // namespace kasmina

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "kasmina-fast's op library (torch.library registrations) and its one Python helper";
  m.def("list_call", &kasmina::list_call, pybind11::arg("op"), pybind11::arg("first"), pybind11::arg("second"),
        pybind11::arg("host_count"), pybind11::arg("seed_count"), pybind11::arg("read_grads"),
        "kasmina::foreach_norm / gradient_stats of Python lists read in C++ (eager only; None when an "
        "element is not exactly a torch.Tensor).");
}
