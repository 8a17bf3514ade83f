"""The bench/ helper scripts run (gpu_check.sh calls them on a GPU machine,
where a broken script would cost device time)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def run(script: str, *args: str) -> str:
    """``python -m bench.scripts.<script> ARGS`` from the repository root (no sys.path edits)."""
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.scripts.{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_host_breakdown_prints_a_table_per_backend():
    out = run("host_breakdown", "--backends", "reference,nonesuch", "--steps", "5", "--top", "4")
    assert "== reference: blend learnable (8, 16, 4, 4) on cpu:" in out
    assert "== nonesuch: not available here" in out
    rows = [line for line in out.splitlines() if "run_backward" in line]
    assert rows and float(rows[0].split()[0]) > 0


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
    table = run("summarize", str(report))
    assert "overhead-blend-8x8-cpu" in table


def _bench(group: str, backend: str, median: float, **info) -> dict:
    return {"group": group, "name": f"{group}[{backend}]", "stats": {"median": median},
            "extra_info": {"backend": backend, **info}}  # fmt: skip


def test_summarize_checks_the_gpu_targets(tmp_path):
    """A made-up CUDA run: each target row reads the right numbers and says met or not."""
    mb = 1_000_000
    floor = 100 * mb / 2000e9  # 50 us at 2000 GB/s
    benchmarks = [
        _bench("blend-learnable-x-float32-cuda", "reference", 4 * floor, bytes=100 * mb),
        _bench("blend-learnable-x-float32-cuda", "cuda", 1.1 * floor, bytes=100 * mb),  # within 1.15x
        _bench("blend-learnable-x-float32-cuda", "reference+compile", 1.05 * floor, bytes=100 * mb),
        _bench("ste---x-float32-cuda", "reference", 3 * floor, bytes=100 * mb),
        _bench("ste---x-float32-cuda", "cuda", 1.2 * floor, bytes=100 * mb),  # 2.5x eager only
        _bench("ste---x-float32-cuda", "cuda+compile", floor, bytes=100 * mb),
        _bench("ste---x-float32-cuda", "triton", 2 * floor, bytes=100 * mb),
        _bench("ste---x-float32-cuda", "triton+compile", 0.9 * floor, bytes=100 * mb),
        _bench("gradient_stats-resnet50-cuda", "cuda", 40e-6, bytes=102 * mb),
        _bench("gradient_stats-many1000-cuda", "triton", 70e-6, bytes=16 * mb),
        _bench("gradient_stats-gpt2_small-cuda", "cuda", 498 * mb / 1700e9, bytes=498 * mb),  # 85%
        _bench("chain-32x64-cuda", "reference@1", 100e-6, chain=1, base="reference"),
        _bench("chain-32x64-cuda", "reference@9", 900e-6, chain=9, base="reference"),
        _bench("chain-32x64-cuda", "cuda@1", 60e-6, chain=1, base="cuda"),
        _bench("chain-32x64-cuda", "cuda@9", 500e-6, chain=9, base="cuda"),  # 55 us / 100 us
        _bench("gradient_stats-resnet50-cpu", "cpp", 1e-3, bytes=102 * mb),  # not a GPU target
        _bench("train-step-cnn-b128-cuda", "reference", 3e-3),
        _bench("train-step-cnn-b128-cuda", "fast", 2e-3),
        _bench("train-step-cnn-b128-cuda", "reference-compiled", 1.5e-3),
        _bench("train-step-cnn-b128-cuda", "fast-compiled", 1.8e-3),
        _bench("train-step-cnn-b32-cpu", "fast", 2e-3),  # not a GPU target
        _bench("train-step-cnn-b32-cpu", "fast-compiled", 9e-3),
    ]
    report = tmp_path / "gpu.json"
    report.write_text(json.dumps({"machine_info": {"cpu": {}}, "datetime": "now", "benchmarks": benchmarks}))
    out = run("summarize", str(report), "--bw", "2000")
    table = out.split("| target | case | backend | measured | met |")[1].splitlines()[2:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table if line.startswith("|")]
    rows = {(c[0], c[1]): (c[3], c[4]) for c in cells if c[2] == "cuda" or "many1000" in c[1]}
    triton_rows = {c[0]: c[3] for c in cells if c[2] == "triton" and "ste" in c[1]}
    assert triton_rows.keys() == {"<= 1.15x floor", ">= 4x eager", "compiled <= eager"}
    assert triton_rows["compiled <= eager"] == "45.0 us vs 100.0 us"
    assert rows[("<= 1.15x floor", "blend-learnable-x-float32-cuda")] == ("1.10x", "yes")
    assert rows[("<= compile(reference)", "blend-learnable-x-float32-cuda")][1] == "**no**"
    assert rows[(">= 4x eager", "ste---x-float32-cuda")] == ("2.50x", "**no**")
    assert rows[("<= 1.15x floor", "ste---x-float32-cuda")][1] == "**no**"
    assert rows[("<= 50 us", "gradient_stats-resnet50-cuda")] == ("40.0 us", "yes")
    assert rows[("<= 60 us", "gradient_stats-many1000-cuda")] == ("70.0 us", "**no**")
    assert rows[(">= 80% of copy bw", "gradient_stats-gpt2_small-cuda")] == ("85%", "yes")
    assert rows[("<= 0.5x eager per op", "chain-32x64-cuda")] == ("0.55x", "**no**")
    assert rows[("compiled <= eager", "ste---x-float32-cuda")] == ("50.0 us vs 60.0 us", "yes")
    step_rows = {(c[0], c[2]): (c[3], c[4]) for c in cells if c[1].startswith("train-step")}
    assert step_rows == {
        ("compiled <= eager", "fast"): ("1.80 ms vs 2.00 ms", "yes"),
        ("<= compile(reference)", "fast-compiled"): ("1.80 ms vs 1.50 ms", "**no**"),
    }
    assert not [c for c in cells if c[1].endswith("-cpu")]
    assert len(rows) == 9 and len(cells) == 9 + 1 + 2 + 2, cells
    assert "Targets: 6 of 14 met" in out
    compiled = out.split("| torch.compile, fwd+bwd | reference | cuda | triton | fastest registration |")
    assert "| ste---x-float32-cuda |  | 50.0 us | 45.0 us | triton |" in compiled[1]


def test_gpu_check_parses_and_refuses_an_unknown_part(tmp_path):
    script = BENCH / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    proc = subprocess.run(
        ["bash", str(script), str(tmp_path / "out"), "bench", "nonesuch"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "unknown part: nonesuch (tests bench compiled host step)" in proc.stdout
    assert not (tmp_path / "out").exists()  # refused before doing anything
