"""Backend selection: what is listed, what can be forced, and what is refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import kasmina_fast
from kasmina_fast import backends


def test_available_lists_reference_first():
    av = kasmina_fast.available()
    assert av[0] == "reference"
    assert set(av) <= set(backends.NAMES)
    st = backends.status()
    assert set(st) == set(backends.NAMES)
    for name, why in st.items():
        assert (why == "available") == (name in av)
        assert why, f"{name} has no status text"


def test_use_backend_restores_previous():
    assert backends.get_backend() == "auto"
    with kasmina_fast.use_backend("reference"):
        assert backends.get_backend() == "reference"
        assert backends.CPU.blend.__module__ == "kasmina_fast.ops.blend"
    assert backends.get_backend() == "auto"


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'fast'"), kasmina_fast.use_backend("fast"):
        pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cuda_backend_is_refused_without_a_gpu():
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available here"):
        with kasmina_fast.use_backend("cuda"):
            pass


def test_forced_backend_never_falls_back_silently():
    if "cpp" not in kasmina_fast.available():
        pytest.skip("needs the C++ extension")
    with kasmina_fast.use_backend("cpp"):
        fail = backends.CUDA.blend  # CUDA tensors under a CPU-only backend
        with pytest.raises(RuntimeError, match="backend 'cpp' cannot run cuda tensors"):
            fail(None, None, None)


@pytest.mark.parametrize(("value", "ok"), [("reference", True), ("auto", True), ("fastest", False)])
def test_environment_variable(value, ok):
    code = "import kasmina_fast; print(kasmina_fast.backends.get_backend())"
    env = {**os.environ, "KASMINA_FAST_BACKEND": value}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if ok:
        assert proc.returncode == 0 and proc.stdout.strip() == value, proc.stderr[-2000:]
    else:
        assert proc.returncode != 0 and "KASMINA_FAST_BACKEND='fastest' is not a backend" in proc.stderr
