"""The package the tests import is the one intended: in CI, the wheel built from the
sdist and installed (not editable), the tests run from a copy outside the source
tree (``KASMINA_FAST_TEST_INSTALLED=1``); in a developer's checkout, the source tree
itself (the editable install). Either way every subpackage is there."""

from __future__ import annotations

import os
import pathlib

import kasmina_fast

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUBPACKAGES = {
    "blueprints",
    "cli",
    "examples",
    "hosts",
    "integrations",
    "lifecycle",
    "ops",
    "training",
}


def test_the_package_under_test_is_the_one_intended():
    origin = pathlib.Path(kasmina_fast.__file__).resolve().parent
    if os.environ.get("KASMINA_FAST_TEST_INSTALLED") == "1":
        assert "site-packages" in origin.parts, origin
        assert not origin.is_relative_to(ROOT), f"{origin} is inside the tests' tree {ROOT}"
    else:
        assert origin == ROOT / "kasmina_fast", origin  # the source tree (an editable install)
    found = {p.name for p in origin.iterdir() if (p / "__init__.py").is_file()}
    import kasmina_fast.triton_kernels as kernels  # (triton_kernels/ at the top of the source tree)

    kernels_at = pathlib.Path(kernels.__file__).resolve().parent
    if os.environ.get("KASMINA_FAST_TEST_INSTALLED") == "1":
        assert found == {*SUBPACKAGES, "triton_kernels"} and kernels_at == origin / "triton_kernels", found
    else:
        assert found == SUBPACKAGES and kernels_at == ROOT / "triton_kernels", found
    assert (origin / "py.typed").is_file()  # type hints are public API
    assert any(origin.glob("_C*.so")), "the op library was not built"
