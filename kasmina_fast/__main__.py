"""Command line: ``python -m kasmina_fast <command>`` (also ``kasmina-fast``).

Commands:
  bench    time every op: fast backend vs eager reference vs torch.compile
  demo     grow a seed in a network while it trains (digits, or --task text)
  info     versions, devices and the status of every backend
  kernels  compile every Triton kernel ahead of time for --arch sm_XX (no GPU
           needed) and report registers, spills, shared memory, access widths
"""

from __future__ import annotations

import argparse
import platform
import sys


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    import kasmina_fast
    from kasmina_fast import backends

    print(f"kasmina-fast {kasmina_fast.__version__}")
    print(f"python       {platform.python_version()} ({sys.executable})")
    print(f"torch        {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    try:
        import triton

        print(f"triton       {triton.__version__}")
    except ImportError:
        print("triton       not installed")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"device       cuda:{i} {torch.cuda.get_device_name(i)}")
    else:
        print(f"device       cpu ({torch.get_num_threads()} threads), no CUDA device")
    active = backends.active()
    print(f"selected     {backends.get_backend()} (CPU: {active['cpu']}, CUDA: {active['cuda']})")
    print("backends:")
    for name, why in backends.status().items():
        print(f"  {name:<10} {why}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from kasmina_fast.cli import bench

    return bench.main(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from kasmina_fast.cli import demo

    return demo.main(args)


def cmd_kernels(args: argparse.Namespace) -> int:
    from kasmina_fast.cli import kernels

    return kernels.main(args.arch, args.nvcc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kasmina-fast", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="time every op against the eager reference")
    from kasmina_fast.cli.bench import add_arguments as bench_arguments

    bench_arguments(b)
    b.set_defaults(func=cmd_bench)
    d = sub.add_parser("demo", help="grow a seed in a network while it trains")
    from kasmina_fast.cli.demo import add_arguments

    add_arguments(d)
    d.set_defaults(func=cmd_demo)
    sub.add_parser("info", help="versions, devices and backends").set_defaults(func=cmd_info)
    k = sub.add_parser("kernels", help="ahead-of-time compile report of the Triton kernels")
    k.add_argument("--arch", default="sm_90", help="target architecture, e.g. sm_80 or sm_90")
    k.add_argument("--nvcc", action="store_true", help="also compile csrc/cuda with nvcc and report it")
    k.set_defaults(func=cmd_kernels)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
