"""Test-session setup: without a GPU, Triton kernels run in the interpreter.

TRITON_INTERPRET must be set before the kernels are defined, i.e. before
kasmina_fast is imported; so it is set here, first."""

import importlib.util
import os

import torch

if not torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
