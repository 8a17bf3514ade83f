"""Backend selection: what is listed, what can be selected, what is refused, and
that selecting one changes the kernel behind the one public op name."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import kasmina_fast
from kasmina_fast import _extension, backends

needs_library = pytest.mark.skipif(not _extension.LOADED, reason="the op library is not built here")


def test_status_names_every_backend_with_a_reason():
    st = backends.status()
    assert tuple(st) == backends.NAMES
    av = kasmina_fast.available()
    for name, why in st.items():
        assert (why == "available") == (name in av)
        assert why, f"{name} has no status text"


def test_use_backend_restores_previous():
    assert backends.get_backend() == "auto"
    with (
        kasmina_fast.use_backend("cpp") if "cpp" in kasmina_fast.available() else pytest.raises(RuntimeError)
    ):
        assert backends.get_backend() == "cpp"
    assert backends.get_backend() == "auto"


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'fast'"), kasmina_fast.use_backend("fast"):
        pass


def test_reference_is_not_a_backend():
    """The eager reference is the test oracle and the no-library fallback, not a setting."""
    with (
        pytest.raises(ValueError, match="unknown backend 'reference'"),
        kasmina_fast.use_backend("reference"),
    ):
        pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cuda_backend_is_refused_without_a_gpu():
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available here"):
        with kasmina_fast.use_backend("cuda"):
            pass


@needs_library
def test_the_public_op_runs_the_selected_kernel(monkeypatch):
    """One name, torch.ops.kasmina.blend: under ``triton`` the dispatcher reaches the Triton
    kernel (a spy stands in for it here), and leaving the block restores the C++ kernel."""
    if "triton" not in kasmina_fast.available() or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton kernels run CPU tensors only in the interpreter")
    from kasmina_fast.triton_kernels import blend

    calls = []
    real = blend.blend
    monkeypatch.setattr(blend, "blend", lambda *a: calls.append(1) or real(*a))
    h, s, a = torch.randn(3, 4), torch.randn(3, 4), torch.tensor(0.25)
    assert backends.active()["cpu"] == "cpp"
    with kasmina_fast.use_backend("triton"):
        assert backends.active()["cpu"] == "triton"
        out = torch.ops.kasmina.blend(h, s, a)
    assert len(calls) == 1
    torch.ops.kasmina.blend(h, s, a)
    assert len(calls) == 1 and backends.active()["cpu"] == "cpp"
    torch.testing.assert_close(out, torch.lerp(h, s, a))
    assert not hasattr(torch.ops.kasmina, "triton_blend")


@needs_library
def test_nested_selections_unwind():
    names = [b for b in ("cpp", "triton") if b in kasmina_fast.available()]
    with kasmina_fast.use_backend(names[-1]):
        with kasmina_fast.use_backend(names[0]):
            assert backends.get_backend() == names[0]
        assert backends.get_backend() == names[-1]
    assert backends.get_backend() == "auto" and backends.active()["cpu"] == "cpp"


@pytest.mark.parametrize(("value", "ok"), [("cpp", True), ("auto", True), ("fastest", False)])
def test_environment_variable(value, ok):
    if value == "cpp" and not _extension.LOADED:
        pytest.skip("needs the op library")
    code = "import kasmina_fast; print(kasmina_fast.backends.get_backend())"
    env = {**os.environ, "KASMINA_FAST_BACKEND": value}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if ok:
        assert proc.returncode == 0 and proc.stdout.strip() == value, proc.stderr[-2000:]
    else:
        assert proc.returncode != 0 and "KASMINA_FAST_BACKEND='fastest' is not a backend" in proc.stderr
