"""The schemas of the ``kasmina`` ops: the single Python source of truth.

``csrc/ops.cpp`` defines the same strings when the C++ extension is loaded;
``tests/ops/test_registration.py`` checks that the two agree.
"""

from __future__ import annotations

NAMESPACE = "kasmina"

SCHEMAS: dict[str, str] = {
    "blend": "blend(Tensor host, Tensor seed, Tensor alpha) -> Tensor",
    "blend_backward": (
        "blend_backward(Tensor grad, Tensor host, Tensor seed, Tensor alpha, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)"
    ),
    "ste": "ste(Tensor host, Tensor seed) -> Tensor",
    "foreach_norm": "foreach_norm(Tensor[] tensors) -> Tensor",
    "gradient_stats": (
        "gradient_stats(Tensor[] host_grads, Tensor[] seed_grads, int host_params, int seed_params) -> Tensor"
    ),
}

#: Ops tagged ``cudagraph_unsafe`` (here, in ``csrc/ops.cpp`` for them and their
#: ``triton_`` twins, and on the Python custom ops): on CUDA the norm ops read a
#: chunk table cached by the tensors' addresses, which a capture can only use
#: when a call before it made the table. torch.compile's CUDA graphs
#: (``mode="reduce-overhead"``) record with inputs at new addresses, so Inductor
#: must run these ops outside its graphs. A CUDA graph captured by hand after a
#: warm-up call works (README).
CUDAGRAPH_UNSAFE = ("foreach_norm", "gradient_stats")
