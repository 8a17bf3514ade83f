"""``python -m kasmina_fast kernels --arch sm_90``: compile every Triton kernel
ahead of time for a GPU architecture, without a GPU, and report per kernel
and dtype: num_warps, registers, spills, shared memory and the widest global
load and store in its PTX. ``--nvcc`` adds the CUDA C++ kernels of csrc/cuda
(compiled by nvcc, same columns).

Registers and spills come from running ptxas (Triton's own) on the PTX.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp64": "float64"}


@dataclasses.dataclass
class Row:
    kernel: str
    dtype: str
    num_warps: int
    registers: int
    spills: int
    shared: int
    widest_load: int
    widest_store: int


def _widest(ptx: str, kind: str) -> int:
    """Bytes moved by the widest global ``ld``/``st`` in the PTX."""
    best = 0
    for vec, bits in re.findall(rf"{kind}\.global(?:\.[a-z]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b", ptx):
        best = max(best, int(vec or 1) * int(bits) // 8)
    return best


def _ptxas(ptx: str, arch: int) -> tuple[int, int]:
    from triton.backends.nvidia.compiler import get_ptxas

    tool = get_ptxas(arch)
    target = re.search(r"^\.target\s+(\w+)", ptx, flags=re.M).group(1)  # sm_90a for Hopper
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run(
            [tool.path, "-v", f"--gpu-name={target}", str(src), "-o", str(Path(d) / "k.cubin")],
            capture_output=True,
            text=True,
        )
    log = proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed for {target}: {log[-2000:]}")
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    return regs, spills


def _specs(dtype: str):
    """(name, kernel, signature, constexprs, divisible-by-16 args, num_warps) for one dtype."""
    import triton.language as tl

    from kasmina_fast.triton_kernels import blend as k
    from kasmina_fast.triton_kernels import norms, valve

    acc = "fp64" if dtype == "fp64" else "fp32"
    acc_tl = tl.float64 if dtype == "fp64" else tl.float32
    t = f"*{dtype}"
    fwd = {"h_ptr": t, "s_ptr": t, "o_ptr": t, "a_ptr": f"*{acc}", "a_stride": "i64", "N": "i64"}
    yield (
        "blend_forward",
        k.blend_forward_kernel,
        fwd,
        {"BLOCK": k.BLOCK, "ACC": acc_tl},
        (0, 1, 2, 3, 5),
        k.NUM_WARPS,
    )
    bwd = {
        "g_ptr": t,
        "h_ptr": t,
        "s_ptr": t,
        "dh_ptr": t,
        "ds_ptr": t,
        "a_ptr": f"*{acc}",
        "a_stride": "i64",
    }
    bwd |= {"part_ptr": f"*{acc}", "N": "i64"}
    for da in (False, True):
        const = {"BLOCK": k.BLOCK, "ACC": acc_tl, "DH": True, "DS": True, "DA": da}
        name = "blend_backward" + ("+d_alpha" if da else "")
        yield name, k.blend_backward_kernel, bwd, const, (0, 1, 2, 3, 4, 5, 7, 8), k.NUM_WARPS
    yield (
        "valve_forward",
        valve.valve_forward_kernel,
        fwd,
        {"BLOCK": valve.BLOCK, "ACC": acc_tl},
        (0, 1, 2, 3, 5),
        k.NUM_WARPS,
    )
    for da in (False, True):
        const = {"BLOCK": valve.BLOCK, "ACC": acc_tl, "DH": True, "DS": True, "DA": da, "ISOLATE": False}
        name = "valve_backward" + ("+d_alpha" if da else "")
        yield name, valve.valve_backward_kernel, bwd, const, (0, 1, 2, 3, 4, 5, 7, 8), k.NUM_WARPS
    fin = {"part_ptr": f"*{acc}", "parts": "i64", "a_ptr": f"*{acc}", "a_stride": "i64", "da_ptr": f"*{acc}"}
    yield (
        "d_alpha_finalize",
        k.d_alpha_finalize_kernel,
        fin,
        {"BLOCK": k.FINAL_BLOCK, "ACC": acc_tl},
        (0, 2, 4),
        4,
    )
    cp = {"src_ptr": t, "dst_ptr": t, "n": "i64"}
    yield "ste_copy", k.copy_kernel, cp, {"BLOCK": k.BLOCK}, (0, 1, 2), k.NUM_WARPS
    dt = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16, "fp64": tl.float64}[dtype]
    ss = {"table_ptr": "*i64", "n_chunks": "i64", "part_ptr": "*fp64"}
    const = {"DTYPE": dt, "ALIGNED": True, "BLOCK": norms.BLOCK}
    yield "norms_sumsq", norms.sumsq_chunks_kernel, ss, const, (0, 2), norms.NUM_WARPS
    if dtype == "fp32":  # the finalizes do not depend on the gradients' dtype
        fin = {
            "part_ptr": "*fp64",
            "first_ptr": "*i64",
            "count_ptr": "*i64",
            "out_ptr": "*fp32",
            "n_tensors": "i64",
        }
        yield (
            "norms_finalize",
            norms.norms_finalize_kernel,
            fin,
            {"BLOCK": norms.FINAL_BLOCK},
            (0, 1, 2, 3),
            4,
        )
        stats = {
            "part_ptr": "*fp64",
            "host_slots": "i64",
            "n_slots": "i64",
            "host_params": "i64",
            "seed_params": "i64",
            "out_ptr": "*fp32",
        }
        const = {"EPS": 1e-8, "CAP": 10.0, "BLOCK": norms.FINAL_BLOCK}
        yield "norms_stats", norms.stats_finalize_kernel, stats, const, (0, 5), 4


def compile_all(arch: int, dtypes=tuple(DTYPES)) -> list[Row]:
    """Compile every Triton kernel for ``sm_<arch>``; no GPU needed."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("ahead-of-time compilation needs TRITON_INTERPRET unset")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    rows = []
    for dtype in dtypes:
        for name, fn, sig, const, divisible, warps in _specs(dtype):
            signature = dict(sig) | {c: "constexpr" for c in const}
            attrs = {(i,): [["tt.divisibility", 16]] for i in divisible}
            src = ASTSource(fn=fn, signature=signature, constexprs=const, attrs=attrs)
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
            ptx = compiled.asm["ptx"]
            regs, spills = _ptxas(ptx, arch)
            rows.append(
                Row(
                    name,
                    dtype,
                    warps,
                    regs,
                    spills,
                    compiled.metadata.shared,
                    _widest(ptx, "ld"),
                    _widest(ptx, "st"),
                )
            )
    return rows


def print_table(rows: list[Row], arch: int) -> None:
    print(f"Triton kernels, sm_{arch} (ahead of time, ptxas -v)")
    print(f"{'kernel':<26}{'dtype':<6}{'warps':>6}{'regs':>6}{'spills':>8}{'smem':>7}{'ld B':>6}{'st B':>6}")
    for r in rows:
        print(
            f"{r.kernel:<26}{r.dtype:<6}{r.num_warps:>6}{r.registers:>6}{r.spills:>8}{r.shared:>7}"
            f"{r.widest_load:>6}{r.widest_store:>6}"
        )


def nvcc_rows(arch: int) -> int:
    script = Path(__file__).resolve().parents[2] / "csrc" / "cuda" / "nvcc_check.sh"
    if not script.exists():
        print("csrc/cuda/nvcc_check.sh is not in this install (run from a source checkout)")
        return 1
    print(f"\nCUDA C++ kernels, sm_{arch} (nvcc -Xptxas -v)")
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(script), str(arch)], env=env).returncode


def main(arch: str, nvcc: bool) -> int:
    m = re.fullmatch(r"sm_(\d+)", arch)
    if not m:
        print(f"kernels: --arch must look like sm_90, got {arch!r}", file=sys.stderr)
        return 2
    number = int(m.group(1))
    print_table(compile_all(number), number)
    return nvcc_rows(number) if nvcc else 0
