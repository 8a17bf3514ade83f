"""Print a markdown table from a pytest-benchmark JSON file: per group, the
median of every backend and its speed-up over the eager reference.

    pytest bench --benchmark-json=out.json && python bench/summarize.py out.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    data = json.load(open(path))
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["extra_info"].get("backend", b["name"])] = b["stats"]["median"]
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}; {data['datetime']}")
    print()
    print("| case | backend | median | vs reference | vs native |")
    print("|---|---|---|---|---|")
    for group, res in groups.items():
        ref = res.get("reference")
        native = res.get("native")
        for backend, med in res.items():
            unit = f"{med * 1e6:.1f} us" if med < 1e-3 else f"{med * 1e3:.2f} ms"
            vs_ref = f"{ref / med:.2f}x" if ref else ""
            vs_nat = f"{native / med:.2f}x" if native else ""
            print(f"| {group} | {backend} | {unit} | {vs_ref} | {vs_nat} |")


if __name__ == "__main__":
    main(sys.argv[1])
