"""``python -m kasmina_fast kernels``: every Triton kernel compiles ahead of
time for sm_80 and sm_90 without a GPU, with no register spills, and the
elementwise fp32/bf16 kernels use wide (>= 8-byte) global loads and stores."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def report(arch: str) -> list[list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # AOT needs the real compiler
    proc = subprocess.run(
        [sys.executable, "-m", "kasmina_fast", "kernels", "--arch", arch],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("kernel"))
    return [line.split() for line in lines[start + 1 :] if line.strip()]


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_aot_compile_report(arch):
    rows = report(arch)
    kernels = {r[0] for r in rows}
    assert {
        "blend_forward",
        "blend_backward",
        "blend_backward+d_alpha",
        "valve_forward",
        "valve_backward",
        "valve_backward+d_alpha",
        "d_alpha_finalize",
        "ste_copy",
    } <= kernels
    assert {r[1] for r in rows} == {"fp32", "bf16", "fp16", "fp64"}
    for kernel, dtype, _warps, regs, spills, _smem, ld, st in rows:
        assert int(spills) == 0, f"{kernel} {dtype} spills"
        assert 0 < int(regs) <= 255
        if kernel in (
            "blend_forward",
            "blend_backward",
            "blend_backward+d_alpha",
            "valve_forward",
            "valve_backward",
            "valve_backward+d_alpha",
            "ste_copy",
            "norms_sumsq",
        ) and dtype in (
            "fp32",
            "bf16",
        ):
            assert int(ld) >= 8 and int(st) >= 8, f"{kernel} {dtype}: widest load {ld} B, store {st} B"


def test_bad_arch_is_a_usage_error():
    proc = subprocess.run(
        [sys.executable, "-m", "kasmina_fast", "kernels", "--arch", "hopper"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "--arch must look like sm_90" in proc.stderr
