// with_gil: runs a call into Python from a C++ op kernel (the Triton
// backends' launchers) with the GIL held; a Python error becomes a
// RuntimeError that names the op.
#pragma once

#include <torch/extension.h>

#include <utility>

namespace kasmina {

template <typename F>
void with_gil(const char* op, F&& call) {
  pybind11::gil_scoped_acquire gil;
  try {
    std::forward<F>(call)();
  } catch (pybind11::error_already_set& e) {
    TORCH_CHECK(false, op, ": the Triton launch failed: ", e.what());
  }
}

}  // namespace kasmina
