"""How long a training step is blocked by a checkpoint: ``Checkpointer.save`` with
``async_save=False`` (the step waits for every file) against ``async_save=True``
(the step waits for DCP to stage the state in memory; a thread writes the files
while training goes on, and the next save, or ``wait()``, completes it).

The model: a ``TransformerHost`` (width 256, 4 blocks, vocabulary 256; 3.23M
parameters) with a seed in TRAINING and AdamW state: about 40 MB of model and
optimizer state in fp32.

    pytest bench/test_bench_checkpoint.py --benchmark-group-by=group
    python -m bench.test_bench_checkpoint      (blocked time and the next step, both modes)
"""

from __future__ import annotations

import statistics
import tempfile
import time

import pytest
import torch
import torch.nn.functional as F

import kasmina_fast as kf
from kasmina_fast import checkpoint

VOCAB, T, BATCH = 256, 32, 16


def make_run():
    torch.manual_seed(0)
    host = kf.TransformerHost(vocab_size=VOCAB, n_embd=256, n_head=4, n_layer=4, block_size=T)
    model = kf.MorphogeneticModel(host, slots=["mid"], task_config=kf.TaskConfig(topology="transformer"))
    model.germinate_seed("mlp", slot="mid")
    model.advance_stage(kf.SeedStage.TRAINING, slot="mid")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, VOCAB, (BATCH, T + 1))

    def step() -> None:
        loss = F.cross_entropy(model(idx[:, :-1]).reshape(-1, VOCAB), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # AdamW state exists
    return model, opt, step


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_checkpoint_save_blocks(benchmark, mode, tmp_path):
    model, opt, _step = make_run()
    ckpt = checkpoint.Checkpointer(tmp_path, keep=2, async_save=mode == "async")
    counter = iter(range(10**6))
    benchmark.group = "checkpoint-save-blocked-transformer-3.2M"
    benchmark.extra_info.update(mode=mode)
    benchmark.pedantic(lambda: ckpt.save(next(counter), model, opt), rounds=6, iterations=1, warmup_rounds=1)
    ckpt.wait()


def measure(rounds: int = 8) -> dict[str, dict[str, float]]:
    """Median ms: the step alone, the save call (blocked), the step that follows it,
    and (async) the time left to wait at the next save."""
    model, opt, step = make_run()
    out = {}
    for mode in ("sync", "async"):
        with tempfile.TemporaryDirectory() as root:
            ckpt = checkpoint.Checkpointer(root, keep=2, async_save=mode == "async")
            alone, blocked, after, waited = [], [], [], []
            for r in range(rounds + 1):
                t0 = time.perf_counter()
                step()
                t1 = time.perf_counter()
                ckpt.save(r, model, opt)
                t2 = time.perf_counter()
                step()
                t3 = time.perf_counter()
                ckpt.wait()
                t4 = time.perf_counter()
                if r:  # the first round warms up
                    alone.append(t1 - t0)
                    blocked.append(t2 - t1)
                    after.append(t3 - t2)
                    waited.append(t4 - t3)
            out[mode] = {
                k: statistics.median(v) * 1e3
                for k, v in (("step", alone), ("save", blocked), ("next_step", after), ("wait", waited))
            }
    return out


if __name__ == "__main__":  # python -m bench.test_bench_checkpoint
    for mode, m in measure().items():
        print(
            f"{mode:<5}  step alone {m['step']:7.1f} ms  save() blocks {m['save']:7.1f} ms  "
            f"the next step {m['next_step']:7.1f} ms  then wait() {m['wait']:7.1f} ms"
        )
