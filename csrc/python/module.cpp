// The Python module part of kasmina_fast._C (the rest of the library is
// torch.library registrations, loaded with torch.ops.load_library).
#include <torch/extension.h>

namespace kasmina {
at::Tensor param_gradient_stats(const pybind11::list& host_params, const pybind11::list& seed_params,
                                int64_t host_count, int64_t seed_count, bool triton);
void set_triton_norm_launcher(int64_t chunk, pybind11::object norms, pybind11::object stats);
void set_triton_blend_launcher(pybind11::object forward, pybind11::object backward, pybind11::object copy);
pybind11::object foreach_norm_list(const pybind11::list& tensors, bool triton);
pybind11::object gradient_stats_list(const pybind11::list& host_grads, const pybind11::list& seed_grads,
                                     int64_t host_params, int64_t seed_params, bool triton);
}  // namespace kasmina

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "kasmina-fast's op library (torch.library registrations) and its Python helpers";
  m.def("param_gradient_stats", &kasmina::param_gradient_stats, pybind11::arg("host_params"),
        pybind11::arg("seed_params"), pybind11::arg("host_count"), pybind11::arg("seed_count"),
        pybind11::arg("triton") = false,
        "kasmina::gradient_stats (kasmina::triton_gradient_stats with triton=True) of the .grad of two lists "
        "of parameters (None grads skipped).");
  m.def("foreach_norm_list", &kasmina::foreach_norm_list, pybind11::arg("tensors"), pybind11::arg("triton"),
        "kasmina::foreach_norm (or triton_foreach_norm) of a list of plain tensors read in C++; None when an "
        "element is not exactly a torch.Tensor (csrc/python/list_ops.cpp).");
  m.def("gradient_stats_list", &kasmina::gradient_stats_list, pybind11::arg("host_grads"),
        pybind11::arg("seed_grads"), pybind11::arg("host_params"), pybind11::arg("seed_params"),
        pybind11::arg("triton"),
        "kasmina::gradient_stats (or triton_gradient_stats) of two lists of plain tensors read in C++; None "
        "when an element is not exactly a torch.Tensor.");
  m.def("set_triton_norm_launcher", &kasmina::set_triton_norm_launcher, pybind11::arg("chunk"),
        pybind11::arg("norms"), pybind11::arg("stats"),
        "Registers the Python launchers of kasmina::triton_foreach_norm and kasmina::triton_gradient_stats "
        "(csrc/python/triton_norms.cpp).");
  m.def("set_triton_blend_launcher", &kasmina::set_triton_blend_launcher, pybind11::arg("forward"),
        pybind11::arg("backward"), pybind11::arg("copy"),
        "Registers the Python launchers of kasmina::triton_blend, triton_blend_backward and triton_ste "
        "(csrc/python/triton_blend.cpp).");
}
