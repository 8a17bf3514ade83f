"""Host cost of one norm call over a long gradient list: 1000 tensors, so the
per-tensor work of the call path (reading the Python list, checks, the cached
chunk table) shows against a tiny kernel. Best of ``--repeats`` x ``--calls``.

    TRITON_INTERPRET=1 python bench/list_host_cost.py           # on a CPU machine
    python bench/list_host_cost.py                              # on a GPU machine

Rows: the ``kasmina_fast`` wrappers on the C++ route (``cpp`` on CPU tensors,
``cuda`` on CUDA tensors; 16 elements a tensor, so the kernel is small), the same
op through ``torch.ops`` (torch converts the Python list), ``torch.stack`` of the
list for scale, and the Triton route with 4096 elements a tensor. Without a GPU
the Triton kernels are replaced by no-op launches (``--stub-triton`` is then
implied: the interpreter would time the kernels' Python, not the host path).
On a GPU the numbers are issue time per call (no synchronisation in the loop).
"""

from __future__ import annotations

import argparse
import time

import torch
from cases import sync
from host_breakdown import stub_triton_kernels

import kasmina_fast
from kasmina_fast.ops import param_gradient_stats


def best_us(fn, calls: int, repeats: int, device: str) -> float:
    for _ in range(min(calls, 50)):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
        sync(device)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--stub-triton", action="store_true", help="no-op Triton launches (implied on CPU)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.stub_triton or device == "cpu":
        stub_triton_kernels()
    native = "cuda" if device == "cuda" else "cpp"
    gen = torch.Generator().manual_seed(0)
    small = [torch.randn(16, generator=gen).to(device) for _ in range(1000)]
    big = [torch.randn(4096, generator=gen).to(device) for _ in range(1000)]
    params = [torch.nn.Parameter(t.clone()) for t in small]
    for p, t in zip(params, small):
        p.grad = t.clone()

    def stats(ts):
        return lambda: kasmina_fast.gradient_stats(ts[:-10], ts[-10:], 1000, 10)

    def param_stats():
        return param_gradient_stats(params[:-10], params[-10:], 1000, 10)

    cases = [
        (native, "gradient_stats, 1000 x 16", stats(small)),
        (native, "gradient_stats via torch.ops, 1000 x 16",
         lambda: torch.ops.kasmina.gradient_stats(small[:-10], small[-10:], 1000, 10)),
        (native, "foreach_norm, 1000 x 16", lambda: kasmina_fast.foreach_norm(small)),
        (native, "param_gradient_stats, 1000 x 16", param_stats),
        (None, "torch.stack of the list, 1000 x 16", lambda: torch.stack(small)),
        ("triton", "gradient_stats, 1000 x 4096", stats(big)),
        ("triton", "foreach_norm, 1000 x 4096", lambda: kasmina_fast.foreach_norm(big)),
        ("triton", "param_gradient_stats, 1000 x 16", param_stats),
    ]  # fmt: skip
    stubbed = " (Triton kernels stubbed)" if args.stub_triton or device == "cpu" else ""
    print(f"torch {torch.__version__}, {device}{stubbed}, best of {args.repeats} x {args.calls} calls")
    print(f"{'route':>9}  {'call':42} {'us/call':>8}")
    for route, name, fn in cases:
        if route is not None and route not in kasmina_fast.available():
            print(f"{route:>9}  {name:42} {'n/a':>8}")
            continue
        if route is None:
            us = best_us(fn, args.calls, args.repeats, device)
        else:
            with kasmina_fast.use_backend(route):
                us = best_us(fn, args.calls, args.repeats, device)
        print(f"{route or '-':>9}  {name:42} {us:8.1f}")


if __name__ == "__main__":
    main()
