"""The bench/ helper scripts run (gpu_check.sh calls them on a GPU machine,
where a broken script would cost device time)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"


def run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args], cwd=BENCH, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_host_breakdown_prints_a_table_per_backend():
    out = run("host_breakdown.py", "--backends", "reference,nonesuch", "--steps", "5", "--top", "4")
    assert "== reference: blend learnable (8, 16, 4, 4) on cpu:" in out
    assert "== nonesuch: not available here" in out
    rows = [line for line in out.splitlines() if "run_backward" in line]
    assert rows and float(rows[0].split()[0]) > 0


def test_list_host_cost_prints_every_route():
    out = run("list_host_cost.py", "--calls", "3", "--repeats", "1")
    rows = [line.split() for line in out.splitlines()[2:]]
    assert len(rows) == 8, out
    for row in rows:
        assert row[-1] == "n/a" or float(row[-1]) > 0, row
    assert [r[0] for r in rows][:5] == ["cpp", "cpp", "cpp", "cpp", "-"], out


def test_summarize_reads_pytest_benchmark_json(tmp_path):
    report = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "pytest", "test_bench_ops.py", "-q", "-p", "no:cacheprovider",
            "-k", "per_call_overhead and blend and cpu-", f"--benchmark-json={report}",
            "--benchmark-min-rounds=2", "--benchmark-max-time=0.01",
        ],
        cwd=BENCH, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert json.loads(report.read_text())["benchmarks"]
    table = run("summarize.py", str(report))
    assert "overhead-blend-8x8-cpu" in table
