"""``python -m kasmina_fast bench``: every op, parseable JSON, positive ratios."""

from __future__ import annotations

import json
import math

import pytest

from kasmina_fast.__main__ import main


def test_bench_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--small", "--repeat", "2", "--no-compile", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    ops = {(r["op"], r["alpha"]) for r in report["results"]}
    assert ops == {
        ("blend", "scalar"),
        ("blend", "learnable"),
        ("valve", "learnable"),
        ("ste", "-"),
        ("foreach_norm", "-"),
        ("gradient_stats", "-"),
    }
    for r in report["results"]:
        assert r["backend"] in ("fast", "reference")
        assert (
            r["median_s"] > 0 and math.isfinite(r["speedup_vs_reference"]) and r["speedup_vs_reference"] > 0
        )
    assert "vs eager" in capsys.readouterr().out


def test_bench_bad_flags():
    with pytest.raises(SystemExit) as info:
        main(["bench", "--repeat", "x"])
    assert info.value.code == 2
    with pytest.raises(SystemExit, match="--repeat must be >= 1"):
        main(["bench", "--repeat", "0"])
