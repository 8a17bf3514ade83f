"""Print markdown tables from a pytest-benchmark JSON file: per group, the
median of every backend, its speed-up over the eager reference, and (where
the case records its bytes) the achieved bandwidth and the ratio to the
bandwidth floor; for the small-slot chains, the per-op slope.

    pytest bench --benchmark-json=out.json && python bench/summarize.py out.json [--bw GBPS]

``--bw`` is the measured copy bandwidth (bytes read + written per second, in
GB/s) that defines the floor; without it the floor columns stay empty.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def fmt(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


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


if __name__ == "__main__":
    main()
