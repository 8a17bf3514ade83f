"""Shared helpers for the tests: input builders, the backends to test, the oracles
(``kasmina_fast.reference`` in fp64), the tolerance rule (error relative to the
largest reference value; NaN never passes), and the lifecycle tests' slot."""

from __future__ import annotations

import gc
import math
import os

import hypothesis.strategies as st
import pytest
import torch

import kasmina_fast
from kasmina_fast import SeedSlot, SeedStage, TaskConfig, reference

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

#: csrc/cpu/stream.h: the C++ CPU kernels write outputs of this many bytes or more
#: with streaming stores
STREAM_BYTES = 8 * 2**20

#: max |got - want| / max |want| allowed, per dtype, against an fp64 oracle.
RTOL = {torch.float64: 1e-10, torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def cpu_backends(op: str = "blend") -> list[str]:
    """Backends whose kernels run ``op`` on CPU tensors in this process: the C++ kernels,
    and the Triton kernels in the interpreter. (Every kernel serves all five ops; ``op``
    names the caller's op for readability.) None without the op library: the public
    functions are then the reference itself (tests/ops/test_registration.py checks that
    fallback in a subprocess)."""
    names = [b for b in ("cpp", "triton") if b in kasmina_fast.available()]
    if os.environ.get("TRITON_INTERPRET") != "1" and "triton" in names:
        names.remove("triton")
    return names


def targets(op: str = "blend") -> list:
    """(device, backend) pairs that can run ``op`` here: every CPU backend and,
    with a GPU, every CUDA backend."""
    out = [pytest.param("cpu", b, id=f"cpu-{b}") for b in cpu_backends(op)]
    if torch.cuda.is_available():
        cuda = [b for b in ("cuda", "triton") if b in kasmina_fast.available()]
        out += [pytest.param("cuda", b, id=f"cuda-{b}") for b in cuda]
    return out


def on(device: str, params: list) -> list:
    """The ``targets()`` entries for ``device``: property tests take fewer examples
    on CUDA, where each new layout or alignment can cost a Triton compile. None
    there: one entry, skipped, that says so."""
    out = [p for p in params if p.values[0] == device]
    return out or [
        pytest.param(device, None, marks=pytest.mark.skip(reason=f"needs a {device.upper()} device"))
    ]


def assert_close_rel(
    got: torch.Tensor, want: torch.Tensor, rtol: float, what: str = "", scale: float = 0.0
) -> None:
    """``max|got - want| <= rtol * max(max|want|, scale)`` (absolute ``rtol`` when all is 0).

    ``scale`` widens the yardstick to the magnitudes behind a sum (a gradient
    element that adds many view elements, or a reduction).

    Positions where the oracle is NaN must be NaN in ``got`` too; any other NaN fails.
    """
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    g, w = got.detach().to(torch.float64).cpu(), want.detach().to(torch.float64).cpu()
    nan_w, nan_g = torch.isnan(w), torch.isnan(g)
    assert torch.equal(nan_w, nan_g), (
        f"{what}: NaN pattern differs ({int(nan_g.sum())} vs {int(nan_w.sum())})"
    )
    fin = ~nan_w
    if not fin.any():
        return
    g, w = g[fin], w[fin]
    inf_w = torch.isinf(w)
    assert torch.equal(g[inf_w], w[inf_w]), f"{what}: infinities differ"
    g, w = g[~inf_w], w[~inf_w]
    if w.numel() == 0:
        return
    scale = max(w.abs().max().item(), scale)
    scale = scale if scale > 0 else 1.0
    err = (g - w).abs().max().item()
    assert err <= rtol * scale, f"{what}: max error {err:.3e} > {rtol:.1e} * {scale:.3e}"


def make(
    shape, dtype, layout: str = "contiguous", generator=None, scale: float = 1.0, device="cpu"
) -> torch.Tensor:
    """A random tensor of ``shape`` on ``device`` in ``layout``: contiguous, channels_last or view.

    ``view`` is a non-contiguous strided view (every other element of a wider
    last dim); for 0-d and empty shapes it is simply contiguous. Values are
    drawn on the CPU, so a seed gives the same numbers on every device.
    """
    if layout == "view" and len(shape) >= 1:
        wide = (*shape[:-1], shape[-1] * 2)
        base = torch.randn(wide, dtype=torch.float64, generator=generator) * scale
        return base.to(dtype).to(device)[..., ::2]
    t = (torch.randn(shape, dtype=torch.float64, generator=generator) * scale).to(dtype).to(device)
    if layout == "channels_last" and len(shape) == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def run_blend(fn, host, seed, alpha, gout):
    """Forward + backward of ``fn(host, seed, alpha)`` on fresh leaves; returns out and the grads."""
    h = host.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    s = seed.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    a = alpha.detach().clone().requires_grad_(alpha.requires_grad)
    out = fn(h, s, a)
    out.backward(gout)
    return out.detach(), h.grad, s.grad, (a.grad if a.requires_grad else None)


def oracle_blend(host, seed, alpha, gout):
    """The reference run in fp64 on the same (already rounded) inputs."""
    h, s, g = (t.detach().to(torch.float64) for t in (host, seed, gout))
    a = alpha.detach().to(torch.float64).requires_grad_(alpha.requires_grad)
    return run_blend(kasmina_fast.reference.blend, h, s, a, g)


def with_backend(name: str):
    return kasmina_fast.use_backend(name)


def lists_sharing_addresses(device: str) -> list[list[torch.Tensor]]:
    """Gradient lists whose tensors start at the same addresses but differ in what a
    cached chunk table is keyed on: the number of elements, the dtype, the list's
    length. A norm op that reused one list's table for another would read the wrong
    elements; each must match its own fp64 norms."""
    base = torch.randn(64, device=device)
    half = torch.randn(48, device=device, dtype=torch.float16)
    other = torch.randn(5, device=device, dtype=torch.float64)
    return [
        [base, other],
        [base[:32], other],  # same address, fewer elements
        [base],  # a prefix of the first list
        [half, other],
        [half.view(torch.bfloat16), other],  # same address and size, other dtype
        [base, other, base[1:]],  # one tensor more
    ]


def end_worker() -> None:
    """The end of a spawned gloo worker's body, before ``destroy_process_group``: objects
    that hold the group (FSDP and DDP modules, DTensor meshes) freed now, not at exit
    after the group is gone (a gloo thread left joinable then aborts the process:
    "terminate called without an active exception"), then every rank meets, so none
    tears the group down while another still talks."""
    gc.collect()
    torch.distributed.barrier()


def on_thread_counts(fn, counts=(1, 2, 3)) -> list:
    """``fn()`` run once with each CPU thread count in turn (the count is restored)."""
    threads = torch.get_num_threads()
    try:
        results = []
        for n in counts:
            torch.set_num_threads(n)
            results.append(fn())
        return results
    finally:
        torch.set_num_threads(threads)


#: Layouts an op may be handed, as views of a fresh base tensor (``view_of``).
VIEWS = (
    "contiguous",  # the base itself
    "channels_last",  # 4-D only (else contiguous)
    "permuted",  # dense, but neither contiguous nor channels_last (dims reversed)
    "batch_transposed",  # dense, the batch dim not outermost: a sample is not one block
    "strided",  # every other element along dim ``dim``
    "expanded",  # dim ``dim`` broadcast from size 1 (stride 0: elements repeat)
    "offset",  # a contiguous view starting 3 elements into its storage
)


def view_triples():
    """A hypothesis strategy of three ``(kind, dim)`` layouts (``view_of``), for host,
    seed and the incoming gradient: half the time one layout for all three (what
    the dense kernels take), else each its own."""
    view = st.tuples(st.sampled_from(VIEWS), st.integers(0, 3))
    return st.one_of(view.map(lambda v: (v, v, v)), st.tuples(view, view, view))


def view_of(shape, kind: str, dim: int = 0):
    """``(base_shape, fn)``: ``fn(base)`` is a view of a tensor of ``base_shape`` with
    ``shape`` and the layout ``kind`` (``VIEWS``; for ``channels_last``, a copy in
    that layout), differentiable, so gradients reach the base.
    ``dim`` picks the dim of ``strided`` and ``expanded`` (taken modulo the rank).
    Kinds that need more dims than ``shape`` has fall back to ``contiguous``."""
    shape = tuple(shape)
    rank = len(shape)
    d = dim % rank if rank else 0
    if kind == "channels_last" and rank == 4:
        return shape, lambda t: t.contiguous(memory_format=torch.channels_last)
    if kind == "permuted" and rank >= 2:
        return shape[::-1], lambda t: t.permute(*range(rank - 1, -1, -1))
    if kind == "batch_transposed" and rank >= 2:
        return (shape[1], shape[0], *shape[2:]), lambda t: t.transpose(0, 1)
    if kind == "strided" and rank >= 1:
        wide = tuple(s * 2 if i == d else s for i, s in enumerate(shape))
        return wide, lambda t: t[(slice(None),) * d + (slice(None, None, 2),)]
    if kind == "expanded" and rank >= 1:
        narrow = tuple(1 if i == d else s for i, s in enumerate(shape))
        return narrow, lambda t: t.expand(shape)
    if kind == "offset":
        n = math.prod(shape)
        return (n + 3,), lambda t: t[3:].view(shape)
    return shape, lambda t: t


def shapes(min_rank: int = 1, max_rank: int = 4, long: tuple[int, ...] = (33, 4099)):
    """A hypothesis strategy of shapes: ``min_rank`` to ``max_rank`` dims of 0 to 5
    elements, one of which may instead be ``long`` (past a 16-byte vector; past
    one 4096-element kernel block), the others then at most 3 (at most ~110k
    elements: the Triton interpreter's time)."""
    return st.builds(
        lambda dims, n, at: tuple(
            (n if i == at % len(dims) else min(d, 3)) if n else d for i, d in enumerate(dims)
        ),
        st.lists(st.integers(0, 5), min_size=min_rank, max_size=max_rank),
        st.sampled_from([None, *long]),
        st.integers(0, max_rank - 1),
    )


# ---- the lifecycle tests' slot and its caller ----------------------------------------------


def make_slot(topology="cnn", channels=8, events=None, **kw) -> SeedSlot:
    tc = TaskConfig(
        topology=topology, max_epochs=kw.pop("max_epochs", 20), blending_steps=kw.pop("blending_steps", 5)
    )
    return SeedSlot(
        "mid", channels, on_telemetry=None if events is None else events.append, task_config=tc, **kw
    )


def features(topology="cnn", channels=8, batch=4, requires_grad=False):
    x = (
        torch.randn(batch, channels, 6, 6).contiguous(memory_format=torch.channels_last)
        if topology == "cnn"
        else torch.randn(batch, 5, channels)
    )
    return x.requires_grad_(requires_grad)


def to_blending(slot: SeedSlot, algorithm: str = "linear", ramped: bool = False, **germinate_kw) -> None:
    """Germinate the topology's usual seed and drive it through TRAINING into BLENDING
    (``ramped``: until its alpha has left 0)."""
    blueprint = "conv_light" if slot.task_config.topology == "cnn" else "mlp"
    slot.germinate(blueprint, blend_algorithm_id=algorithm, **germinate_kw)
    slot.advance_stage(SeedStage.TRAINING)
    for _ in range(50):
        if slot.stage == SeedStage.BLENDING and (not ramped or float(slot.alpha) > 0.0):
            return
        epoch(slot, 50.0 + slot.state.metrics.epochs_total)
    raise AssertionError(f"no BLENDING: {slot.stage.name}")


def grow_to(
    slot: SeedSlot,
    stage: SeedStage,
    blueprint: str,
    algorithm: str = "linear",
    mode: str = "lerp",
    noise: float = 0.05,
    host=None,
) -> None:
    """Germinate ``blueprint`` in ``slot`` and drive it to ``stage`` through the public
    API (BLENDING: one epoch into the ramp; CULLED: culled from BLENDING). The seed's
    weights (and a gate's) get ``noise``, so that the seed is not the identity. ``host``:
    the host's parameters (``MorphogeneticModel.host_parameters()``), for the telemetry."""
    slot.germinate(blueprint, None, host, blend_algorithm_id=algorithm, blend_mode=mode)
    with torch.no_grad():
        for p in slot.seed_parameters():
            p.add_(noise * torch.randn_like(p))
    if stage == SeedStage.GERMINATED:
        return
    slot.advance_stage(SeedStage.TRAINING)
    target = {SeedStage.FOSSILIZED: SeedStage.PROBATIONARY, SeedStage.CULLED: SeedStage.BLENDING}.get(
        stage, stage
    )
    until_stage(slot, target)
    if target == SeedStage.BLENDING:
        epoch(slot, 60.0 + slot.state.metrics.epochs_total)  # alpha leaves 0
    with torch.no_grad():
        for p in slot.alpha_schedule.parameters() if slot.alpha_schedule is not None else ():
            p.add_(noise * torch.randn_like(p))
    if stage == SeedStage.FOSSILIZED:
        assert slot.advance_stage(SeedStage.FOSSILIZED).passed
    if stage == SeedStage.CULLED:
        assert slot.cull("test")
    assert slot.stage == stage, slot.stage


def until_stage(slot: SeedSlot, stage: SeedStage, counterfactual: float = 2.0) -> None:
    """Epochs (a rising accuracy, a positive counterfactual) until ``slot`` reaches ``stage``."""
    for _ in range(50):
        if slot.stage == stage:
            return
        epoch(slot, 60.0 + slot.state.metrics.epochs_total, counterfactual=counterfactual)
    raise AssertionError(f"{slot.stage.name}, not {stage.name}")


def epoch(slot: SeedSlot, acc: float, counterfactual: float | None = None, ratio: float = 0.2) -> None:
    """One epoch of the caller's contract (gradient ratio set as the telemetry would)."""
    m = slot.state.metrics
    m.seed_gradient_norm_ratio = ratio
    m.record_accuracy(acc)
    if counterfactual is not None:
        m.counterfactual_contribution = counterfactual
    slot.step_epoch()


# ---- the norm ops: the lists every backend is checked on, and the oracle ----------------------


def oracle_norms(ts) -> torch.Tensor:
    """``reference.foreach_norm`` (fp64 sums, rounded to fp32) as fp64 on the CPU."""
    return reference.foreach_norm(ts).double().cpu()


def oracle_stats(host, seed, hp: int, sp: int) -> torch.Tensor:
    """``reference.gradient_stats`` (fp64 sums, rounded to fp32) as fp64 on the CPU."""
    return reference.gradient_stats(host, seed, hp, sp).double().cpu()


def norm_lists(device: str = "cpu"):
    """The lists every backend is checked on (the CUDA tests run them on CUDA too)."""
    gen = torch.Generator().manual_seed(1)

    def mk(shape, dtype=torch.float32, layout="contiguous"):
        return make(shape, dtype, layout, gen, device=device)

    return {
        "empty_list": [],
        "empty_tensors": [torch.zeros(0, device=device), torch.zeros(3, 0, device=device), mk((5,))],
        "one_element": [torch.tensor([3.0], device=device)],
        "zero_dim": [torch.tensor(-2.5, device=device)],
        "many_tiny": [mk((3,)) for _ in range(10_000)],
        "one_large": [mk((300_001,))],
        "mixed_dtypes": [
            mk((17, 3), d) for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        ],
        "views": [
            mk((6, 10), layout="view"),
            mk((4, 6, 5, 5), layout="channels_last"),
            mk((8, 9), torch.float64).t(),
            mk((70_000, 3))[::3],
        ],
        "large_values": [torch.full((10,), 1e30, device=device), torch.full((4,), 3e38, device=device)],
    }


def check_gradient_stats_edges(device: str = "cpu") -> None:
    """The formula's edges through the current backend (the CUDA tests run
    them on CUDA too)."""

    def t(*values):
        return torch.tensor(values, device=device)

    def full(n, value):
        return torch.full((n,), value, device=device)

    empty = kasmina_fast.gradient_stats([], [], 0, 0)
    only_seed = kasmina_fast.gradient_stats([], [full(4, 1.0)], 3, 3)
    nan = kasmina_fast.gradient_stats([t(1.0, float("nan"))], [full(2, 1.0)], 1, 1)
    inf_seed = kasmina_fast.gradient_stats([full(2, 1.0)], [t(float("inf"))], 1, 1)
    huge = kasmina_fast.gradient_stats([full(4, 1e30)], [full(4, 1e30)], 1, 1)
    assert torch.equal(empty.cpu(), torch.zeros(4))
    assert torch.equal(only_seed.cpu(), torch.tensor([0.0, 2.0, 0.0, 0.0]))
    assert nan[3] == 1.0 and math.isnan(nan[0]) and math.isnan(nan[2])
    assert inf_seed[3] == 1.0 and inf_seed[1] == float("inf") and inf_seed[2] == 10.0
    # squares overflow fp32 but not the fp64 accumulator: finite, no false alarm
    assert huge[3] == 0.0 and huge[2] == 1.0 and math.isclose(huge[0].item(), 2e30, rel_tol=1e-6)


def check_more_than_2_31_elements(device: str = "cpu") -> None:
    """One bf16 tensor of 2^31 + 2^20 + 3 elements (4.3 GB) between small ones,
    through the current backend: ones, except marked values past 2^31 and at
    their 32-bit aliases, so the sums of squares are exact integers and an
    offset that wraps at 2^31 or 2^32 reads the wrong marks (or faults).
    tests/ops/test_cuda.py runs it on CUDA."""
    n = 2**31 + 2**20 + 3
    big = torch.ones(n, device=device, dtype=torch.bfloat16)
    marks = {2**31 + 12345: 64.0, n - 1: 128.0, 12345: 2.0, 2**31 - 1: 4.0, 2**31 + 5: 8.0, 5: 0.0}
    for i, v in marks.items():
        big[i] = v
    want_big = n - len(marks) + sum(v * v for v in marks.values())  # exact in fp64
    first = torch.full((7,), 3.0, device=device)
    last = torch.full((5,), 2.0, device=device, dtype=torch.float16)
    norms = kasmina_fast.foreach_norm([first, big, last]).double().cpu()
    stats = kasmina_fast.gradient_stats([first, big], [last], 1, 1).double().cpu()
    del big
    want = torch.tensor([63.0, want_big, 20.0], dtype=torch.float64).sqrt()
    torch.testing.assert_close(norms, want.float().double(), rtol=0, atol=0)
    want_stats = torch.tensor([(63.0 + want_big) ** 0.5, 20.0**0.5], dtype=torch.float64)
    torch.testing.assert_close(stats[:2], want_stats.float().double(), rtol=0, atol=0)
    assert stats[3] == 0.0


# ---- models nobody here wrote the host for: the graft tests' -----------------------------------


class UNet(torch.nn.Module):
    """A small U-Net: ``enc1``'s output feeds both ``enc2`` (through a pool) and the skip
    concatenation before ``dec`` (a point with two consumers)."""

    def __init__(self, channels: int = 8, classes: int = 3) -> None:
        super().__init__()
        nn = torch.nn
        self.enc1 = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.enc2 = nn.Sequential(nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(2 * channels, channels, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(2 * channels, channels, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(channels, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        return self.head(self.dec(torch.cat([self.up(e2), e1], dim=1)))


def graft_case(name: str, seed: int = 0):
    """(model, its grafted points, example input, a function of the output to compare)
    for ``resnet`` and ``gpt2`` (Hugging Face, small configs, eval mode), ``unet`` and
    ``mlp`` (dense points)."""
    from kasmina_fast.cli import hf

    if name in ("resnet", "gpt2"):
        pytest.importorskip("transformers", reason="the hf extra (in .ci/requirements.txt) is not installed")
    torch.manual_seed(seed)
    if name == "resnet":
        model = hf.resnet(num_classes=10, in_channels=1, widths=(8, 16))
        points = ["resnet.embedder", "resnet.encoder.stages.0", "resnet.encoder.stages.1"]
        return model.eval(), points, {"pixel_values": torch.randn(2, 1, 16, 16)}, lambda o: o.logits
    if name == "gpt2":
        model = hf.gpt2(vocab_size=50, block_size=16, n_embd=32, n_layer=2, n_head=2)
        points = ["transformer.h.0", "transformer.h.1", "transformer.ln_f"]
        return model.eval(), points, {"input_ids": torch.randint(0, 50, (2, 12))}, lambda o: o.logits
    if name == "mlp":
        model = MLP()
        return model.eval(), ["body.1", "body.3"], torch.randn(4, 12), lambda o: o
    model = UNet()
    return model.eval(), ["enc1", "enc2", "dec"], torch.randn(2, 1, 8, 8), lambda o: o


#: the small causal LMs (Hugging Face, from configs) and the point each is grafted at:
#: GPT-2 with tied embeddings, Llama with an untied head
LM_VOCAB, LM_T = 48, 16
LM_POINTS = {"gpt2": "transformer.h.1", "llama": "model.layers.1"}


def grown_lm(name: str = "gpt2", gates=None):
    """``name`` (``gpt2`` or ``llama``) built from a seeded config and grafted at its point
    (a transformer task config with 4 blending steps)."""
    from kasmina_fast.cli import hf

    torch.manual_seed(0)
    if name == "gpt2":
        model = hf.gpt2(vocab_size=LM_VOCAB, block_size=LM_T, n_embd=32, n_layer=2, n_head=4)
    else:
        model = hf.llama(vocab_size=LM_VOCAB, block_size=LM_T)
    tc = TaskConfig(topology="transformer", blending_steps=4)
    ids = torch.zeros(2, LM_T, dtype=torch.long)
    return kasmina_fast.graft(
        model, [LM_POINTS[name]], example_input={"input_ids": ids}, task_config=tc, gates=gates
    )


class MLP(torch.nn.Module):
    """A tabular classifier: its hidden features are ``[B, C]`` (dense points)."""

    def __init__(self, features: int = 12, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(features, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.body(x))


def call(model, inputs):
    """``model`` on a graft case's example input (a tensor or a dict of keyword arguments)."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)
