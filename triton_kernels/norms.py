"""Triton kernels for ``kasmina::foreach_norm`` and ``kasmina::gradient_stats``:
the sum of squares of every tensor of a list, in one launch per dtype.

Math: sumsq_i = sum(t_i^2), accumulated in fp64 (squares of large fp32
gradients would overflow fp32 and raise a false non-finite flag).
Work split: every tensor is cut into BLOCK-element chunks; a table lists, per
chunk, the tensor's address, the chunk's first element, its length and its
partial slot (slots numbered in list order). Each program reduces one chunk
(a fixed tree: ``tl.sum``) into one fp64 partial. Then one small launch adds
partials in a fixed order: a program per tensor writes fp32 ``sqrt(sumsq_i)``
(``foreach_norm``), or one program adds the host tensors' slots and the seed
tensors' slots and writes the four numbers of ``gradient_stats``. Two
launches per call with one dtype; bitwise deterministic, no atomics. Memory
traffic: one read of every element plus 8 bytes per chunk.

The chunk table is built on the host and cached by the list's (address,
size, dtype) signature, so a training loop that keeps its ``.grad`` tensors
uploads it once (and a CUDA graph can capture the launch after a warm-up; the
table of a captured list is kept for the life of the process, see
csrc/norm_plan.h).
``foreach_norm`` and ``gradient_stats`` at the end of this file are the ops'
kernels while the Triton backend is selected (``kasmina_fast.backends``
registers them at the dispatcher). Their host work (checks, dense copies of
strided views, the cached table) is Python; the CUDA C++ kernels do the same in
C++ (csrc/norm_plan.h has the same cache rules).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import triton
import triton.language as tl
from kasmina_fast.triton_kernels.layout import cdiv, is_dense, launch_guard

from kasmina_fast import reference
from kasmina_fast.ops import _checks

BLOCK = 4096
FINAL_BLOCK = 1024
NUM_WARPS = 8
_TL = {"float32": tl.float32, "float16": tl.float16, "bfloat16": tl.bfloat16, "float64": tl.float64}


@triton.jit
def sumsq_chunks_kernel(
    table_ptr, n_chunks, part_ptr, DTYPE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr
):
    """table rows: [address, first element, length, partial index] per chunk."""
    p = tl.program_id(0)
    addr = tl.load(table_ptr + p)
    first = tl.load(table_ptr + n_chunks + p)
    length = tl.load(table_ptr + 2 * n_chunks + p)
    slot = tl.load(table_ptr + 3 * n_chunks + p)
    ptr = addr.to(tl.pointer_type(DTYPE)) + first
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    offs = tl.arange(0, BLOCK)
    if length == BLOCK:  # every chunk but a tensor's last: no mask, so the loads vectorise
        x = tl.load(ptr + offs).to(tl.float64)
    else:
        x = tl.load(ptr + offs, mask=offs < length, other=0.0).to(tl.float64)
    tl.store(part_ptr + slot, tl.sum(x * x, axis=0))


@triton.jit(do_not_specialize=["n_tensors"])
def norms_finalize_kernel(part_ptr, first_ptr, count_ptr, out_ptr, n_tensors, BLOCK: tl.constexpr):
    """out[i] = fp32(sqrt(sum of tensor i's partials, in order))."""
    i = tl.program_id(0)
    first = tl.load(first_ptr + i)
    count = tl.load(count_ptr + i)
    acc = tl.zeros((BLOCK,), dtype=tl.float64)
    for start in range(0, count, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(part_ptr + first + offs, mask=offs < count, other=0.0)
    tl.store(out_ptr + i, tl.sqrt(tl.sum(acc, axis=0)).to(tl.float32))


@triton.jit
def _slot_sum(part_ptr, lo, hi, BLOCK: tl.constexpr):
    acc = tl.zeros((BLOCK,), dtype=tl.float64)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(part_ptr + offs, mask=offs < hi, other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit(do_not_specialize=["host_slots", "n_slots", "host_params", "seed_params"])
def stats_finalize_kernel(
    part_ptr,
    host_slots,
    n_slots,
    host_params,
    seed_params,
    out_ptr,
    EPS: tl.constexpr,
    CAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program: [host_norm, seed_norm, ratio, nonfinite] (csrc/norms_math.h's formula)
    from the host tensors' slots [0, host_slots) and the seed's [host_slots, n_slots)."""
    host_ss = _slot_sum(part_ptr, 0, host_slots, BLOCK)
    seed_ss = _slot_sum(part_ptr, host_slots, n_slots, BLOCK)
    host = tl.sqrt(host_ss)
    seed = tl.sqrt(seed_ss)
    ratio = seed / tl.where(host < EPS, 1.0, host)  # (the ratio is 0 there anyway)
    if (host_params > 0) & (seed_params > 0):
        ratio = ratio * tl.sqrt(host_params.to(tl.float64) / seed_params.to(tl.float64))
    ratio = tl.where(ratio != ratio, ratio, tl.minimum(ratio, CAP))
    ratio = tl.where(host < EPS, 0.0, ratio)
    total = host_ss + seed_ss
    finite = (total == total) & (tl.abs(total) < float("inf"))
    tl.store(out_ptr + 0, host.to(tl.float32))
    tl.store(out_ptr + 1, seed.to(tl.float32))
    tl.store(out_ptr + 2, ratio.to(tl.float32))
    tl.store(out_ptr + 3, tl.where(finite, 0.0, 1.0).to(tl.float32))


class _Plan:
    """Chunk tables per dtype group, and each tensor's partial range."""

    def __init__(self, tensors: list[torch.Tensor], device: torch.device) -> None:
        groups: dict[tuple[str, bool], list[list[int]]] = {}
        firsts, counts = [], []
        slot = 0
        for t in tensors:
            n = t.numel()
            chunks = cdiv(n, BLOCK) if n else 0
            firsts.append(slot)
            counts.append(chunks)
            if chunks:
                key = (str(t.dtype).removeprefix("torch."), t.data_ptr() % 16 == 0)
                rows = groups.setdefault(key, [[], [], [], []])
                for c in range(chunks):
                    rows[0].append(t.data_ptr())
                    rows[1].append(c * BLOCK)
                    rows[2].append(min(BLOCK, n - c * BLOCK))
                    rows[3].append(slot + c)
            slot += chunks
        self.n_partials = slot
        # every row in one buffer, one copy; on CUDA through pinned memory, no host sync
        flat = [x for rows in groups.values() for row in rows for x in row] + firsts + counts
        staged = torch.tensor(flat, dtype=torch.int64)
        if device.type == "cuda":
            staged = staged.pin_memory().to(device, non_blocking=True)
        sizes = [4 * len(rows[0]) for rows in groups.values()] + [len(firsts), len(counts)]
        *tables, self.firsts, self.counts = staged.split(sizes)
        self.groups = [
            (dtype, aligned, len(rows[0]), table)
            for ((dtype, aligned), rows), table in zip(groups.items(), tables)
        ]
        self.host_firsts = [*firsts, slot]
        self.stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        self.uploaded = None  # a cached plan's: recorded after the upload (CUDA)

    def record_on(self, stream: torch.cuda.Stream) -> None:
        """A use on another stream than the upload's: ``stream`` waits for the upload, and
        the tables' memory is not reused before the work queued on ``stream`` is done."""
        if stream != self.stream:
            stream.wait_event(self.uploaded)
            for *_, table in self.groups:
                table.record_stream(stream)
            self.firsts.record_stream(stream)
            self.counts.record_stream(stream)


# The same rules as csrc/norm_plan.h: 16 recent plans, plus the pinned plans
# of lists a CUDA graph captured (the graph reads their tables at each replay).
_PLANS: OrderedDict[tuple, _Plan] = OrderedDict()
_PINNED: dict[tuple, _Plan] = {}
_MAX_PLANS = 16


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _plan(tensors: list[torch.Tensor], device: torch.device, op: str, cache: bool = True) -> _Plan:
    capturing = _capturing(device)
    if not cache:
        if capturing:
            raise RuntimeError(
                f"{op}: a list that holds a non-dense (strided) view cannot be captured in a CUDA "
                "graph: its contiguous copy is new memory on every call, so its chunk table is "
                "uploaded on every call, a copy that a graph cannot hold; pass dense tensors (contiguous, "
                "channels_last or any dense permutation)"
            )
        return _Plan(tensors, device)
    key = (device, *((t.data_ptr(), t.numel(), t.dtype) for t in tensors))
    plan = _PINNED.get(key)
    if plan is None:
        plan = _PLANS.get(key)
        if plan is not None:
            # (pop and reinsert rather than move_to_end: another thread may have evicted it)
            _PLANS.pop(key, None)
            if capturing:
                _PINNED[key] = plan
            else:
                _PLANS[key] = plan
    if plan is None:
        if capturing:
            raise RuntimeError(
                f"{op}: this list has no chunk table yet, and its upload (a copy from host memory) "
                "cannot be captured in a CUDA graph; call "
                f"{op} once with the same tensors before capturing (a warm-up call)"
            )
        plan = _Plan(tensors, device)
        if plan.stream is not None:  # (only a cached plan can be used on another stream later)
            plan.uploaded = plan.stream.record_event()
        _PLANS[key] = plan
        if len(_PLANS) > _MAX_PLANS:
            _PLANS.popitem(last=False)
    elif device.type == "cuda" and not capturing:
        plan.record_on(torch.cuda.current_stream(device))
    return plan


def _launch_chunk_sums(groups: list[tuple[str, bool, int, torch.Tensor]], parts: torch.Tensor) -> None:
    for dtype, aligned, n_chunks, table in groups:
        sumsq_chunks_kernel[(n_chunks,)](
            table, n_chunks, parts, DTYPE=_TL[dtype], ALIGNED=aligned, BLOCK=BLOCK, num_warps=NUM_WARPS
        )


def _dense_plan(
    tensors: list[torch.Tensor], device: torch.device, op: str
) -> tuple[_Plan, torch.Tensor, list[torch.Tensor]]:
    """The plan of the list, room for its fp64 partials, and the tensors the plan
    points at, which the caller keeps alive until the kernels are launched: dense
    layouts are read in place; other strided views are first copied to a contiguous
    tensor, new memory on every call, so such a list's plan is not cached."""
    dense = [t if is_dense(t) else t.contiguous() for t in tensors]
    copied = any(d is not t for d, t in zip(dense, tensors))
    plan = _plan(dense, device, op, cache=not copied)
    return plan, torch.empty(max(plan.n_partials, 1), dtype=torch.float64, device=device), dense


def foreach_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The kernel of ``kasmina::foreach_norm``: fp32 ``[N]``, the L2 norm of every
    tensor. Two launches per dtype group: chunk sums, then a program per tensor adds
    its partials ``parts[first[i] : first[i] + count[i]]``."""
    _checks.check_foreach_norm(tensors)
    device = _checks.list_device(tensors)
    out = torch.empty(len(tensors), dtype=torch.float32, device=device)
    if not tensors:
        return out
    with launch_guard(out):
        plan, parts, dense = _dense_plan(tensors, device, "kasmina::foreach_norm")
        _launch_chunk_sums(plan.groups, parts)
        norms_finalize_kernel[(len(tensors),)](
            parts, plan.firsts, plan.counts, out, len(tensors), BLOCK=FINAL_BLOCK
        )
    del dense  # (read by the launch: on CUDA later in stream order, which reuse respects)
    return out


def gradient_stats(
    host_grads: list[torch.Tensor], seed_grads: list[torch.Tensor], host_params: int, seed_params: int
) -> torch.Tensor:
    """The kernel of ``kasmina::gradient_stats``: fp32 ``[host_norm, seed_norm,
    ratio, nonfinite]``. Chunk sums, then one program adds the host tensors'
    partials ``[0, host_slots)`` and the seed's ``[host_slots, n_slots)``."""
    _checks.check_gradient_stats(host_grads, seed_grads, host_params, seed_params)
    device = _checks.list_device(host_grads, seed_grads)
    out = torch.empty(4, dtype=torch.float32, device=device)
    with launch_guard(out):
        plan, parts, dense = _dense_plan([*host_grads, *seed_grads], device, "kasmina::gradient_stats")
        _launch_chunk_sums(plan.groups, parts)
        stats_finalize_kernel[(1,)](
            parts,
            plan.host_firsts[len(host_grads)],
            plan.n_partials,
            host_params,
            seed_params,
            out,
            EPS=reference.HOST_NORM_EPS,
            CAP=reference.RATIO_CAP,
            BLOCK=FINAL_BLOCK,
        )
    del dense  # (kept alive until the launch, as in foreach_norm)
    return out
