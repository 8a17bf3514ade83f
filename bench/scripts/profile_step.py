"""Profile one fwd+bwd step of an op under a backend: host time per step
(wall clock, GPU synchronised), device time per step (CUDA events), and the
profiler's top entries. Tells host-bound from device-bound.

    python -m bench.scripts.profile_step --backend triton --op blend --kind learnable --shape 256,64,32,32
"""

from __future__ import annotations

import argparse
import time

import torch

from kasmina_fast.cli.cases import make_step, selected


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--op", default="blend")
    ap.add_argument("--kind", default="learnable")
    ap.add_argument("--shape", default="256,64,32,32")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    dtype = getattr(torch, args.dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    step = make_step(args.op, args.kind, shape, dtype, device, args.backend)
    with selected(args.backend):
        for _ in range(5):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        host = (time.perf_counter() - t0) / args.steps  # launch rate, queue not drained
        if device == "cuda":
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / args.steps
        with torch.profiler.profile() as prof:
            for _ in range(10):
                step()
            if device == "cuda":
                torch.cuda.synchronize()
    print(f"{args.op} {args.kind} {shape} {args.dtype} backend={args.backend}")
    print(f"host time to issue a step {host * 1e6:.1f} us; wall per step {wall * 1e6:.1f} us")
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=14, max_name_column_width=50))


if __name__ == "__main__":
    main()
