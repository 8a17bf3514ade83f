"""Print markdown tables from a pytest-benchmark JSON file: per group, the
median of every backend, its speed-up over the eager reference, and (where
the case records its bytes) the achieved bandwidth and the ratio to the
bandwidth floor; for the small-slot chains, the per-op slope; the compiled
cases side by side per backend (``compile_rows``: which compiles fastest); then, for a CUDA run,
every speed target with the measured value and whether it is
met (``target_rows``), including the whole training step of
``bench/test_bench_step.py`` compiled against eager and against the compiled
reference.

    pytest bench --benchmark-json=out.json && python -m bench.scripts.summarize out.json [--bw GBPS]

``--bw`` is the measured copy bandwidth (bytes read + written per second, in
GB/s) that defines the floor; without it the floor columns stay empty.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def fmt(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


FAST = ("cuda", "triton")
COMPILED = ("reference", "cuda", "triton")  # "<backend>+compile" labels, in table order
FLOOR_RATIO = 1.15  # every blend/STE case within 1.15x of its bandwidth floor
STE_SPEEDUP = 4.0  # STE >= 4x eager
SMALL_SLOT_RATIO = 0.5  # per op in a chain <= 0.5x eager's
NORM_LIMITS_US = {"resnet50": 50.0, "tiny14": 8.0, "many1000": 60.0}  # gradient_stats, host call included
GPT2_BW_SHARE = 0.8  # gpt2_small gradient_stats >= 80% of copy bandwidth


def target_rows(groups: dict, chains: dict, bw: float) -> list[tuple[str, str, str, str, bool]]:
    """(target, case, backend, measured, met) for every target that this run's
    CUDA groups can check; floor and bandwidth targets need ``bw`` (GB/s)."""
    rows: list[tuple[str, str, str, str, bool]] = []

    def med(res: dict, label: str) -> float | None:
        return res.get(label, {}).get("stats", {}).get("median")

    for group, res in groups.items():
        if not group.endswith("-cuda"):
            continue
        op = group.split("-")[0]
        for backend in FAST:
            t = med(res, backend)
            if t is None:
                continue

            def add(target: str, measured: str, ok: bool) -> None:
                rows.append((target, group, backend, measured, ok))  # noqa: B023 (called at once)

            nbytes = res[backend]["extra_info"].get("bytes")
            if op in ("blend", "ste") and "30-tensors" not in group:
                ref, ref_compiled = med(res, "reference"), med(res, "reference+compile")
                compiled = med(res, f"{backend}+compile")
                if nbytes and bw:
                    ratio = t / (nbytes / (bw * 1e9))
                    add(f"<= {FLOOR_RATIO}x floor", f"{ratio:.2f}x", ratio <= FLOOR_RATIO)
                if op == "ste" and ref:
                    add(f">= {STE_SPEEDUP:.0f}x eager", f"{ref / t:.2f}x", ref / t >= STE_SPEEDUP)
                if ref_compiled:
                    add("<= compile(reference)", f"{fmt(t)} vs {fmt(ref_compiled)}", t <= ref_compiled)
                if compiled:
                    add("compiled <= eager", f"{fmt(compiled)} vs {fmt(t)}", compiled <= t)
            elif op == "gradient_stats":
                name = group[len("gradient_stats-") : -len("-cuda")]
                if name in NORM_LIMITS_US:
                    limit = NORM_LIMITS_US[name]
                    add(f"<= {limit:.0f} us", fmt(t), t * 1e6 <= limit)
                elif name == "gpt2_small" and nbytes and bw:
                    share = nbytes / t / (bw * 1e9)
                    add(f">= {GPT2_BW_SHARE:.0%} of copy bw", f"{share:.0%}", share >= GPT2_BW_SHARE)
        if group.startswith("train-step-"):  # bench/test_bench_step.py: the whole step, same run
            fast, fast_c, ref_c = med(res, "fast"), med(res, "fast-compiled"), med(res, "reference-compiled")
            if fast and fast_c:
                measured = f"{fmt(fast_c)} vs {fmt(fast)}"
                rows.append(("compiled <= eager", group, "fast", measured, fast_c <= fast))
            if fast_c and ref_c:
                measured = f"{fmt(fast_c)} vs {fmt(ref_c)}"
                rows.append(("<= compile(reference)", group, "fast-compiled", measured, fast_c <= ref_c))
            continue
    for group, per_backend in chains.items():
        ref = per_backend.get("reference", {})
        if not group.endswith("-cuda") or 1 not in ref or 9 not in ref or ref[9] <= ref[1]:
            continue
        ref_slope = (ref[9] - ref[1]) / 8
        for backend in FAST:
            t = per_backend.get(backend, {})
            if 1 in t and 9 in t:
                ratio = (t[9] - t[1]) / 8 / ref_slope
                target = f"<= {SMALL_SLOT_RATIO}x eager per op"
                rows.append((target, group, backend, f"{ratio:.2f}x", ratio <= SMALL_SLOT_RATIO))
    return rows


def compile_rows(groups: dict) -> list[tuple[str, list[float | None], str]]:
    """(case, median of each ``COMPILED`` registration under torch.compile or None,
    the fastest of the fast ones) for every case with a compiled fast op."""
    rows = []
    for group, res in groups.items():
        times = [res.get(f"{b}+compile", {}).get("stats", {}).get("median") for b in COMPILED]
        fast = {b: t for b, t in zip(COMPILED[1:], times[1:]) if t is not None}
        if fast:
            rows.append((group, times, min(fast, key=fast.get)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--bw", type=float, default=0.0, help="copy bandwidth in GB/s")
    args = ap.parse_args()
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    machine = ""
    for path in args.files:
        with open(path) as f:
            data = json.load(f)
        machine = f"{data['machine_info'].get('cpu', {}).get('brand_raw', '?')}; {data['datetime']}"
        for b in data["benchmarks"]:
            groups[b["group"]][b["extra_info"].get("backend", b["name"])] = b
    print(f"host: {machine}" + (f"; floor bandwidth {args.bw:.0f} GB/s" if args.bw else ""))
    print()
    print("| case | backend | median | vs eager reference | vs native | GB/s | time / floor |")
    print("|---|---|---|---|---|---|---|")
    chains: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for group, res in groups.items():
        ref = res.get("reference", {}).get("stats", {}).get("median")
        native = res.get("native", {}).get("stats", {}).get("median")
        for backend, b in res.items():
            med = b["stats"]["median"]
            info = b["extra_info"]
            if "chain" in info:
                chains[group][info["base"]][info["chain"]] = med
                continue
            nbytes = info.get("bytes")
            gbs = f"{nbytes / med / 1e9:.0f}" if nbytes else ""
            floor = f"{med / (nbytes / (args.bw * 1e9)):.2f}x" if nbytes and args.bw else ""
            vs_ref = f"{ref / med:.2f}x" if ref else ""
            vs_nat = f"{native / med:.2f}x" if native else ""
            print(f"| {group} | {backend} | {fmt(med)} | {vs_ref} | {vs_nat} | {gbs} | {floor} |")
    if chains:
        print()
        print(
            "| small slot (chain of blends) | backend | 1 op | 9 ops | per op (slope) | vs eager reference |"
        )
        print("|---|---|---|---|---|---|")
        for group, per_backend in chains.items():
            ref = per_backend.get("reference", {})
            ref_slope = (ref[9] - ref[1]) / 8 if 1 in ref and 9 in ref else None
            for backend, t in per_backend.items():
                if 1 not in t or 9 not in t:
                    continue
                slope = (t[9] - t[1]) / 8
                ratio = f"{slope / ref_slope:.2f}x" if ref_slope else ""
                print(f"| {group} | {backend} | {fmt(t[1])} | {fmt(t[9])} | {fmt(slope)} | {ratio} |")
    compiled = compile_rows(groups)
    if compiled:
        print()
        print("| torch.compile, fwd+bwd | " + " | ".join(COMPILED) + " | fastest registration |")
        print("|---" * (len(COMPILED) + 2) + "|")
        for group, times, best in compiled:
            cells = " | ".join(fmt(t) if t is not None else "" for t in times)
            print(f"| {group} | {cells} | {best} |")
    rows = target_rows(groups, chains, args.bw)
    if rows:
        met = sum(r[4] for r in rows)
        print()
        print(f"Targets: {met} of {len(rows)} met")
        print()
        print("| target | case | backend | measured | met |")
        print("|---|---|---|---|---|")
        for target, case, backend, measured, ok in rows:
            print(f"| {target} | {case} | {backend} | {measured} | {'yes' if ok else '**no**'} |")


if __name__ == "__main__":
    main()
