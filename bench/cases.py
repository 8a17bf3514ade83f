"""The benchmark cases live in the package (``kasmina_fast.cli.cases``) so that
``python -m kasmina_fast bench`` and ``pytest bench`` time the same thing."""

from kasmina_fast.cli.cases import (
    CL,
    backends_here,
    gpt2_small_shapes,
    gradient_list,
    make_chain,
    make_norm_step,
    make_step,
    op_fn,
    passes,
    resnet50_shapes,
    sync,
)

__all__ = [
    "CL",
    "backends_here",
    "gpt2_small_shapes",
    "gradient_list",
    "make_chain",
    "make_norm_step",
    "make_step",
    "op_fn",
    "passes",
    "resnet50_shapes",
    "sync",
]
