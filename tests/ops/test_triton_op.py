"""The ``triton_op`` registration of the Triton blend and STE (kasmina_fast/ops/triton_op.py).

On the CPU: its math under TRITON_INTERPRET=1 over the blend matrix (called
directly: the backend itself is CUDA-only), and torch's analysis of its kernels,
which decides what a compiled graph clones before each launch, for a Hopper
target. On a GPU, tests/ops/test_cuda.py runs the ``triton_op`` backend too (no
sync, CUDA graphs, compile in both modes, opcheck, tensors over 2^31 elements)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import pytest
import torch
from hypothesis import given, settings

from kasmina_fast import backends
from tests.ops.test_blend import CASES, VIEW_CASES, check, check_views, make_alpha
from tests.utils import DTYPES, make, shapes

pytestmark = pytest.mark.skipif(not backends.triton_usable(), reason="the Triton backend is not usable here")


interpreted = os.environ.get("TRITON_INTERPRET") == "1" and "triton_op" in backends._IMPLS.get("blend", {})


def ops():
    from kasmina_fast.ops import triton_op

    return triton_op


def test_the_backend_is_offered_for_cuda_tensors_only():
    st = backends.status()
    if torch.cuda.is_available():
        assert st["triton_op"] == "available"
        return
    assert st["triton_op"] == "no CUDA device is visible"
    with pytest.raises(RuntimeError, match="backend 'triton_op' is not available here"):
        backends.set_backend("triton_op")
    assert backends.get_backend() == "auto"


@pytest.mark.skipif(not interpreted, reason="runs the kernels in the interpreter")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "layout", "alpha_kind"), [c for c in CASES if c.values[2] != "python"])
def test_blend_matches_reference(dtype, shape, layout, alpha_kind):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((str(dtype), layout, alpha_kind, shape)).encode()))
    host, seed = make(shape, dtype, layout, gen), make(shape, dtype, layout, gen)
    check("triton_op", host, seed, make_alpha(alpha_kind, shape, gen), dtype, fn=ops().triton_op_blend)


@pytest.mark.skipif(not interpreted, reason="runs the kernels in the interpreter")
@settings(max_examples=25, deadline=None)
@given(**(VIEW_CASES | {"shape": shapes(long=(33,))}))
def test_blend_on_views(shape, dtype, views, alpha_kind, alpha_dtype, learnable, seed_):
    """Its Python layout test (``triton_ops._blocks``) on permuted, strided, broadcast
    and offset views, as tests/ops/test_blend.py checks the C++ one (shorter
    shapes: this eager path is slow in the interpreter)."""
    args = (shape, dtype, views, alpha_kind, alpha_dtype, learnable, seed_)
    check_views("triton_op", "cpu", *args, fn=ops().triton_op_blend)


@pytest.mark.skipif(not interpreted, reason="runs the kernels in the interpreter")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "view"])
def test_ste_value_is_host_and_g_reaches_both(dtype, layout):
    gen = torch.Generator().manual_seed(5)
    host = make((4, 3, 5, 7), dtype, layout, gen).requires_grad_()
    seed = make((4, 3, 5, 7), dtype, layout, gen).requires_grad_()
    gout = make((4, 3, 5, 7), dtype, "contiguous", gen)
    out = ops().triton_op_ste(host, seed)
    out.backward(gout)
    assert torch.equal(out.detach(), host.detach()) and out.data_ptr() != host.data_ptr()
    assert out.stride() == torch.empty_like(host).stride()
    assert torch.equal(host.grad, gout) and torch.equal(seed.grad, gout)


def test_ops_have_the_triton_schemas_and_name_their_kernels():
    kernels = {
        "triton_op_blend": ["blend_forward_kernel"],
        "triton_op_blend_backward": ["blend_backward_kernel", "d_alpha_finalize_kernel"],
        "triton_op_ste": ["copy_kernel"],
    }
    from torch._library.triton import get_triton_kernels_for_op

    for name, twin in [
        ("triton_op_blend", "triton_blend"),
        ("triton_op_blend_backward", "triton_blend_backward"),
        ("triton_op_ste", "triton_ste"),
    ]:
        op = getattr(torch.ops.kasmina, name).default
        assert str(op._schema).replace(name, twin) == str(getattr(torch.ops.kasmina, twin).default._schema)
        # torch's compile cache keys on these kernels' source: every kernel the op launches
        assert [k.fn.__name__ for k in get_triton_kernels_for_op(f"kasmina::{name}")] == kernels[name]


# What torch.compile makes of each op: AOTAutograd's functionalized graph (the graph
# Inductor lowers), traced with fake tensors. Run without TRITON_INTERPRET (torch
# analyses the real JIT kernels: which pointers each one writes) and with a stand-in
# for the CUDA driver that only names the target.
GRAPHS = r"""
import json
import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver


class Hopper:  # all that torch's kernel analysis asks of the active driver
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


driver.set_active(Hopper())
from torch._functorch.aot_autograd import aot_export_module
from torch._dynamo.source import ConstantSource
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
from kasmina_fast.ops import triton_op as T


class Call(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        out = self.fn(*args)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def fake(mode, t, i, dynamic):
    if not dynamic:
        return mode.from_tensor(t)
    every_dim = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * t.dim())
    return mode.from_tensor(t, source=ConstantSource(f"x{i}"), symbolic_context=every_dim)


def nodes(fn, *tensors, dynamic=False):
    with FakeTensorMode(shape_env=ShapeEnv() if dynamic else None) as mode:
        args = [fake(mode, t, i, dynamic) for i, t in enumerate(tensors)]
        gm, _ = aot_export_module(Call(fn), args, trace_joint=False)
    out = []
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        if "triton_kernel_wrapper" in str(n.target):
            sizes = n.kwargs["grid"][0]
            ints = [x for x in sizes if isinstance(x, int)]
            grid = "static" if len(ints) == len(sizes) else "symbolic" if set(ints) <= {1} else "partly"
            out.append(["kernel", sorted(n.kwargs["tensors_to_clone"]), grid])
        elif isinstance(n.target, torch._ops.OpOverload):  # (not getitem, not size arithmetic)
            out.append([n.target.name().split("::")[-1].split(".")[0], None, None])
    return out


h = torch.randn(4, 3, 8, 8).to(memory_format=torch.channels_last)
s, g = torch.randn_like(h), torch.randn_like(h)
a = torch.rand(4, 1, 1, 1)


def backward(*mask):
    return lambda *x: T.triton_op_blend_backward(*x, list(mask))


print(json.dumps({
    "blend": nodes(T.triton_op_blend, h, s, a),
    "blend 0-d": nodes(T.triton_op_blend, h, s, torch.tensor(0.3)),
    "blend bf16": nodes(T.triton_op_blend, h.bfloat16(), s.bfloat16(), a),
    "backward": nodes(backward(True, True, True), g, h, s, a),
    "backward, no d_alpha": nodes(backward(True, True, False), g, h, s, a),
    "backward, d_host only": nodes(backward(True, False, False), g, h, s, a),
    "backward, no d_host": nodes(backward(False, True, True), g, h, s, a),
    "ste": nodes(T.triton_op_ste, h, s),
    "strided blend": nodes(T.triton_op_blend, h[..., ::2], s[..., ::2], a),
    "blend, dynamic shapes": nodes(T.triton_op_blend, h, s, a, dynamic=True),
    "backward, dynamic shapes": nodes(backward(True, True, True), g, h, s, a, dynamic=True),
    "ste, dynamic shapes": nodes(T.triton_op_ste, h, s, dynamic=True),
}))
"""

ALLOCATIONS = {"empty_like", "empty", "new_empty", "_assert_tensor_metadata"}


def test_under_compile_each_op_is_its_kernels_and_their_outputs():
    """Inductor's input for each op (AOTAutograd's functional graph): the outputs'
    allocations and the kernel launches, cloning nothing but outputs -- no copy of an
    input, no extra kernel. (An input that torch's analysis takes for written, such
    as alpha read through a helper whose result fed the store addresses, is cloned
    before every launch.) Layouts the kernels do not walk fall back to aten math."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", GRAPHS], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    graphs = json.loads(proc.stdout.splitlines()[-1])
    kernels = {
        "blend": [["o_ptr"]],
        "blend 0-d": [["o_ptr"]],
        "blend bf16": [["o_ptr"]],
        "backward": [["dh_ptr", "ds_ptr", "part_ptr"], ["da_ptr"]],
        "backward, no d_alpha": [["dh_ptr", "ds_ptr"]],
        "backward, d_host only": [["dh_ptr"]],
        "backward, no d_host": [["ds_ptr", "part_ptr"], ["da_ptr"]],
        "ste": [["dst_ptr"]],
    }
    kernels |= {f"{case}, dynamic shapes": kernels[case] for case in ("blend", "backward", "ste")}
    for case, want in kernels.items():
        got = [clones for kind, clones, _ in graphs[case] if kind == "kernel"]
        assert got == want, f"{case}: kernels cloning {got}, want {want}"
        # symbolic sizes stay symbolic in every grid axis (padding 1s aside): no
        # recompile per batch size
        grids = {grid for kind, _, grid in graphs[case] if kind == "kernel"}
        assert grids == {"symbolic" if "dynamic" in case else "static"}, f"{case}: {grids} grids"
        others = {kind for kind, _, _ in graphs[case] if kind != "kernel"}
        assert others <= ALLOCATIONS | {"sym_size"}, (
            f"{case}: more than allocations around the kernels: {others}"
        )
    assert not any(kind == "kernel" for kind, _, _ in graphs["strided blend"])  # the reference math
