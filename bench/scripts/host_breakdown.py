"""Where the host time of one fwd+bwd step goes, per backend: cProfile of many
small steps (tiny tensors, so the device never holds the host back), top
functions by own time. Tells which layer a host-bound backend should lose
(the custom-op wrapper, autograd, the Triton launcher, allocations).

    python -m bench.scripts.host_breakdown --backends cuda,triton --steps 300
    TRITON_INTERPRET=1 python -m bench.scripts.host_breakdown --backends triton --shape 2,4 --stub-triton
    TRITON_INTERPRET=1 python -m bench.scripts.host_breakdown --backends cpp,triton --op gradient_stats \
        --list many1000 --stub-triton

For ``--op foreach_norm`` / ``gradient_stats`` a step is one call over a gradient
list (``--list``, see ``bench.workloads.gradient_list``; host = all but
the last 10 tensors).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

import kasmina_fast
from bench.workloads import gradient_list
from kasmina_fast.cli.cases import make_step, selected, sync


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def stub_triton_kernels() -> None:
    """Every Triton kernel becomes a no-op launch (the host path alone)."""
    from kasmina_fast.triton_kernels import blend, norms

    for name in ("blend_forward_kernel", "blend_backward_kernel", "d_alpha_finalize_kernel", "copy_kernel"):
        setattr(blend, name, _NoLaunch())
    for name in ("sumsq_chunks_kernel", "norms_finalize_kernel", "stats_finalize_kernel"):
        setattr(norms, name, _NoLaunch())


def make_list_step(op: str, name: str, device: str):
    ts = gradient_list(name, device)
    if op == "foreach_norm":
        return lambda: kasmina_fast.foreach_norm(ts)
    return lambda: kasmina_fast.gradient_stats(ts[:-10], ts[-10:], 1000, 10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default=",".join(["reference", *kasmina_fast.available()]))
    ap.add_argument("--op", default="blend")
    ap.add_argument("--kind", default="learnable")
    ap.add_argument("--shape", default="8,16,4,4")
    ap.add_argument("--list", default="many1000", help="gradient list for --op foreach_norm/gradient_stats")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument(
        "--stub-triton",
        action="store_true",
        help="replace the Triton kernels by no-op launchers: the host path alone, even in the interpreter",
    )
    args = ap.parse_args()
    if args.stub_triton:
        stub_triton_kernels()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = tuple(int(s) for s in args.shape.split(","))
    for backend in args.backends.split(","):
        if backend != "reference" and backend not in kasmina_fast.available():
            print(f"== {backend}: not available here ({kasmina_fast.backends.status().get(backend)})\n")
            continue
        if args.op in ("foreach_norm", "gradient_stats"):
            step = make_list_step(args.op, args.list, device)
            case = f"{args.op} {args.list} on {device}"
        else:
            step = make_step(args.op, args.kind, shape, torch.float32, device, backend)
            case = f"{args.op} {args.kind} {shape} on {device}"
        with selected(backend):
            for _ in range(20):
                step()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            issue = (time.perf_counter() - t0) / args.steps
            sync(device)
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.steps):
                step()
            prof.disable()
            sync(device)
        stats = pstats.Stats(prof).stats  # (file, line, name) -> (cc, ncalls, tottime, cumtime, callers)
        rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[: args.top]
        print(f"== {backend}: {case}: {issue * 1e6:.1f} us per step issued")
        print(f"{'own us/step':>12} {'cum us/step':>12} {'calls/step':>10}  function")
        for (file, line, name), (_, ncalls, tottime, cumtime, _) in rows:
            where = f"{file.rsplit('/', 2)[-1] if '/' in file else file}:{line}({name})"
            own, cum = tottime / args.steps * 1e6, cumtime / args.steps * 1e6
            print(f"{own:12.1f} {cum:12.1f} {ncalls / args.steps:10.1f}  {where}")
        print()


if __name__ == "__main__":
    main()
