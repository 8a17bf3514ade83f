"""``python -m kasmina_fast bench``: time every op, fwd+bwd with gradients reset
each iteration, for the fast backend, the eager reference and
``torch.compile`` of the reference, in one run, on whatever device is here.

Prints medians and speed-ups over the eager reference; on a GPU also the
achieved bandwidth and the ratio to the floor (bytes that must move / the
measured device-to-device copy bandwidth). ``--json FILE`` writes the same
numbers for machines.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import torch

import kasmina_fast
from kasmina_fast.cli.cases import make_norm_step, make_step, passes, selected, sync


def _median_time(fn: Callable[[], None], device: str, repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth(device: str) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write)."""
    x = torch.empty(2**26, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / _median_time(lambda: y.copy_(x), device, 10)


def run(device: str, repeat: int, small: bool, compile_reference: bool) -> dict:
    shape = (8, 16, 16, 16) if small else ((64, 64, 32, 32) if device == "cpu" else (256, 64, 32, 32))
    n = 4096 if small else 2**20
    fast = "auto"
    bw = copy_bandwidth(device) if device == "cuda" else None
    rows = []
    cases = [
        ("blend", "scalar"),
        ("blend", "learnable"),
        ("valve", "learnable"),
        ("ste", "-"),
        ("foreach_norm", "-"),
        ("gradient_stats", "-"),
    ]
    for op, kind in cases:
        variants = [("fast", fast, False), ("reference", "reference", False)]
        if compile_reference:
            variants.append(("reference+compile", "reference", True))
        base = None
        for label, backend, compiled in variants:
            with selected(backend):
                if op in ("blend", "valve", "ste"):
                    step = make_step(op, kind, shape, torch.float32, device, backend, compiled=compiled)
                    nbytes = passes(op, kind) * torch.Size(shape).numel() * 4
                else:
                    step = make_norm_step(op, device, backend, compiled, n)
                    nbytes = None
                t = _median_time(step, device, repeat)
            base = t if label == "reference" else base
            row = {"op": op, "alpha": kind, "backend": label, "median_s": t}
            if bw and nbytes:
                row["gb_per_s"] = nbytes / t / 1e9
                row["floor_ratio"] = t / (nbytes / bw)
            rows.append(row)
        for row in rows:
            if row["op"] == op and (row["alpha"] == kind):
                row["speedup_vs_reference"] = base / row["median_s"]
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "backends": kasmina_fast.available(),
        "shape": list(shape),
        "copy_bandwidth_gb_per_s": bw / 1e9 if bw else None,
        "results": rows,
    }


def print_table(report: dict) -> None:
    shape = report["shape"]
    print(
        f"device {report['device']}, torch {report['torch']}, "
        f"blend/valve/STE shape {shape} fp32 channels_last"
    )
    if report["copy_bandwidth_gb_per_s"]:
        print(f"floor bandwidth (measured copy): {report['copy_bandwidth_gb_per_s']:.0f} GB/s")
    print(f"{'op':<16}{'alpha':<11}{'backend':<19}{'median':>12}{'vs eager':>10}{'GB/s':>8}{'floor':>8}")
    for r in report["results"]:
        t = r["median_s"]
        med = f"{t * 1e6:.1f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms"
        gbs = f"{r['gb_per_s']:.0f}" if "gb_per_s" in r else ""
        floor = f"{r['floor_ratio']:.2f}x" if "floor_ratio" in r else ""
        print(
            f"{r['op']:<16}{r['alpha']:<11}{r['backend']:<19}{med:>12}"
            f"{r['speedup_vs_reference']:>9.2f}x{gbs:>8}{floor:>8}"
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=30, help="timed iterations per case (median)")
    p.add_argument("--small", action="store_true", help="tiny tensors (a smoke test, not a measurement)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def main(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        raise SystemExit("bench: --repeat must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda asked for, but no CUDA device is visible")
    report = run(args.device, args.repeat, args.small, not args.no_compile)
    print_table(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0
