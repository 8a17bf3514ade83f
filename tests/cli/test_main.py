"""The command line entry point."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kasmina_fast.__main__ import main


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("cpp", "triton", "cuda"):
        assert f"  {name}" in out
    assert "torch" in out


def test_bad_command_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_module_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "kasmina_fast", "info"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "backends:" in proc.stdout, proc.stderr[-2000:]


def test_console_script_is_declared():
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("kasmina-fast") == "kasmina_fast.__main__:main"
