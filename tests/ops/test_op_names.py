"""One op, one name: whatever backend is selected while a model is traced, the compiled
graphs (forward and backward), the exported program and the AOTInductor package name
only the public ops, and the package runs in a fresh process that has loaded nothing
but the op library."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch
from torch import nn
from torch._dynamo.backends.common import aot_autograd

import kasmina_fast
from kasmina_fast import _extension, reference
from tests.utils import cpu_backends, with_backend

PUBLIC = {"blend", "blend_backward", "valve", "valve_backward", "ste", "foreach_norm", "gradient_stats"}

pytestmark = pytest.mark.skipif(not _extension.LOADED, reason="the op library is not built here")


class Grown(nn.Module):
    """A slot's forward (STE of a blend, then a valve) plus its gradient telemetry."""

    def forward(self, host, seed, alpha):
        y = kasmina_fast.valve(kasmina_fast.ste(kasmina_fast.blend(host, seed, alpha), seed), seed, alpha)
        return y, kasmina_fast.gradient_stats([y], [seed], 3, 1), kasmina_fast.foreach_norm([host, y])


def inputs():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(4, 3, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last)
    s = torch.randn(4, 3, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last)
    return h, s, torch.rand(4, 1, 1, 1, generator=gen)


def kasmina_names(text: str) -> set[str]:
    """Every ``kasmina.<name>`` / ``kasmina::<name>`` that ``text`` mentions."""
    return set(re.findall(r"kasmina(?:\.|::)([A-Za-z_]\w*)", text)) - {"default"}


@pytest.mark.parametrize("backend", cpu_backends())
def test_compiled_graphs_name_only_public_ops(backend):
    torch._dynamo.reset()
    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm

    h, s, a = (t.requires_grad_() for t in inputs())
    with with_backend(backend):
        fn = torch.compile(
            Grown(), backend=aot_autograd(fw_compiler=record, bw_compiler=record), fullgraph=True
        )
        y, _, _ = fn(h, s, a)
        y.sum().backward()
    assert len(graphs) == 2  # forward and backward
    names = kasmina_names("\n".join(graphs))
    assert names <= PUBLIC, names
    assert PUBLIC <= names


@pytest.mark.parametrize("backend", cpu_backends())
def test_exported_program_names_only_public_ops(backend):
    with with_backend(backend):
        ep = torch.export.export(Grown(), inputs())
    names = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    kasmina = {n for n in names if n.startswith("kasmina.")}
    assert kasmina == {
        f"kasmina.{op}.default" for op in ("blend", "valve", "ste", "gradient_stats", "foreach_norm")
    }


@pytest.mark.slow
def test_aoti_package_runs_where_only_the_op_library_is_loaded(tmp_path):
    """Made under the last available backend (Triton, in the interpreter, when there is
    one), loaded in a process that never imports kasmina_fast."""
    backend = cpu_backends()[-1]
    with with_backend(backend):
        ep = torch.export.export(Grown(), inputs())
        package = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "grown.pt2"))
    with zipfile.ZipFile(package) as z:
        text = "\n".join(
            z.read(n).decode(errors="replace") for n in z.namelist() if n.endswith((".cpp", ".json", ".h"))
        )
    names = kasmina_names(text)
    assert names and names <= PUBLIC, names
    h, s, a = inputs()
    torch.save({"h": h, "s": s, "a": a}, tmp_path / "inputs.pt")
    library = kasmina_fast._extension.LIBRARY
    code = f"""
        import sys, torch
        torch.ops.load_library({library!r})
        x = torch.load({str(tmp_path / "inputs.pt")!r})
        runner = torch._inductor.aoti_load_package({package!r})
        y, stats, norms = runner(x["h"], x["s"], x["a"])
        torch.save({{"y": y, "stats": stats, "norms": norms}}, {str(tmp_path / "out.pt")!r})
        assert "kasmina_fast" not in sys.modules
        print("OK")
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    want = reference.valve(reference.blend(h, s, a), s, a)
    torch.testing.assert_close(out["y"], want)
    torch.testing.assert_close(out["stats"], reference.gradient_stats([want], [s], 3, 1))
    torch.testing.assert_close(out["norms"], reference.foreach_norm([h, want]))
