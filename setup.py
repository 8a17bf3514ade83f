"""Build of kasmina-fast's C++ (and, where possible, CUDA) extension.

The extension ``kasmina_fast._C`` is the op library: a shared library of
``torch.library`` registrations, loaded with ``torch.ops.load_library``; it is
also a Python module with one eager-only function (csrc/python/).
CUDA sources in ``csrc/cuda`` are compiled only when the installed torch is a
CUDA build and a CUDA toolkit is found; ``KASMINA_FAST_NO_EXTENSION=1`` skips
the extension altogether (the package then runs the eager reference).

Build against the torch that will run it:
``pip install --no-build-isolation -e .``
"""

from __future__ import annotations

import glob
import os

from setuptools import find_packages, setup

# every package under kasmina_fast/, found (a listed one can be forgotten), and the
# Triton kernels, which live in triton_kernels/ at the top
PACKAGES = [*find_packages(include=["kasmina_fast", "kasmina_fast.*"]), "kasmina_fast.triton_kernels"]
PACKAGE_DIR = {"kasmina_fast.triton_kernels": "triton_kernels"}
PACKAGE_DATA = {"kasmina_fast": ["py.typed"]}


def extensions() -> tuple[list, dict]:
    if os.environ.get("KASMINA_FAST_NO_EXTENSION") == "1":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/python/*.cpp"))
    # -fno-trapping-math: no FP exception is ever unmasked here, so the compiler may
    # compute both sides of a select (csrc/cpu/fast_tanh.h vectorizes only then)
    cxx = ["-O3", "-fno-trapping-math", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    link = ["-fopenmp"]
    with_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    if with_cuda and cuda_sources:
        ext = cpp_extension.CUDAExtension(
            "kasmina_fast._C",
            sources + cuda_sources,
            define_macros=[("KASMINA_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]},
            extra_link_args=link,
        )
    else:
        ext = cpp_extension.CppExtension(
            "kasmina_fast._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data=PACKAGE_DATA,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
