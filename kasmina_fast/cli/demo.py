"""``python -m kasmina_fast demo``: grow a seed in a network while it trains, and
show what growing it paid.

A ``CNNHost`` learns scikit-learn's 8x8 handwritten digits (a real data set that
ships inside the package, upscaled to 16x16), or, with ``--task text``, a
``TransformerHost`` learns next-character prediction on Python's own
standard-library sources. ``--host hf-resnet`` (digits) and ``--host gpt2``
(text) use Hugging Face models instead, grafted with :func:`kasmina_fast.graft`.

The same host is trained twice in one run, from the same initial weights on the
same batches: alone, then growing a seed; the summary compares their final
accuracy and parameters. The default hosts are small (``--width``) so that the
host alone is short of capacity, where a seed can pay. :class:`kasmina_fast.Grower`
runs the growth: a ``HeuristicPolicy`` germinates the seed at ``germinate_epoch``,
the counterfactual contribution is measured every epoch with alpha forced to 0,
the seed is fossilized when it helps by at least one point and culled when it
stalls; ``step_epoch`` does the rest. The learning rate decays to 0 (cosine, a
``LambdaLR`` that the seed's param group follows), so the final accuracies are
converged values, not one noisy step's.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import kasmina_fast as kf
from kasmina_fast import SeedStage
from kasmina_fast.cli.cases import selected

S = SeedStage


@dataclasses.dataclass
class DemoConfig:
    task: str = "digits"
    epochs: int = 16
    batch_size: int = 64
    steps_per_epoch: int | None = None  # None: one pass over the training set
    seed: int = 0
    device: str = "cpu"
    compile: bool = False
    backend: str = "auto"
    germinate_epoch: int = 2  # the seed trains from this epoch (>= 1)
    blueprint: str | None = None  # default per task
    host: str = "builtin"  # builtin (CNNHost / TransformerHost), hf-resnet (digits), gpt2 (text)
    width: int | None = None  # the host's channels / embedding width; None: the small default
    slots: tuple[str, ...] | None = None  # the controller grows its seed in the first; None: per host
    patience: int = 5  # epochs a seed may stay in TRAINING before the controller culls it
    plot: str | None = None
    quiet: bool = False


@dataclasses.dataclass
class DemoResult:
    history: list[dict[str, Any]]
    events: list[kf.TelemetryEvent]
    summary: dict[str, Any]


# ---- data ----------------------------------------------------------------------------------


def digits_data(seed: int, device: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's digits as [N, 1, 16, 16] floats in [0, 1]; a seeded 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    tr, va = perm[:cut], perm[cut:]
    return x[tr].to(device), y[tr].to(device), x[va].to(device), y[va].to(device)


TEXT_MODULES = ("textwrap", "string", "difflib", "heapq", "bisect", "colorsys", "fnmatch", "shlex")
BLOCK = 32


def text_data(seed: int, device: str) -> tuple[Tensor, Tensor, int]:
    """Characters of a few standard-library modules' sources: (train, val, vocab size)."""
    import importlib

    corpus = "\n".join(inspect.getsource(importlib.import_module(m)) for m in TEXT_MODULES)
    vocab = sorted(set(corpus))
    codes = torch.tensor([vocab.index(c) for c in corpus], dtype=torch.long)
    cut = int(0.9 * len(codes))
    return codes[:cut].to(device), codes[cut:].to(device), len(vocab)


# ---- model and controller ------------------------------------------------------------------


#: the default widths: small enough that the host alone is short of capacity on
#: the task, so that a seed pays (the summary compares with the host alone)
WIDTH = {("digits", "builtin"): 4, ("digits", "hf-resnet"): 4, ("text", "builtin"): 16, ("text", "gpt2"): 16}
HOSTS = {"digits": ("builtin", "hf-resnet"), "text": ("builtin", "gpt2")}


def default_slots(cfg: DemoConfig) -> tuple[str, ...]:
    from kasmina_fast.cli import hf

    return {"hf-resnet": hf.RESNET_SLOTS, "gpt2": hf.GPT2_SLOTS}.get(cfg.host, ("mid",))


def build(cfg: DemoConfig, vocab: int, example: Tensor, on_event) -> kf.MorphogeneticModel:
    """The host with its slots: built-in, or a Hugging Face model grafted at ``cfg.slots``."""
    width = cfg.width or WIDTH[cfg.task, cfg.host]
    topology = "cnn" if cfg.task == "digits" else "transformer"
    tc = kf.TaskConfig(topology=topology, max_epochs=cfg.epochs, blending_steps=3)
    slots = list(cfg.slots or default_slots(cfg))
    if cfg.host == "builtin":
        if cfg.task == "digits":
            host = kf.CNNHost(num_classes=10, n_blocks=3, base_channels=width, pool_layers=2, in_channels=1)
        else:
            host = kf.TransformerHost(vocab_size=vocab, n_embd=width, n_head=4, n_layer=3, block_size=BLOCK)
        return kf.MorphogeneticModel(host, cfg.device, slots=slots, task_config=tc, on_telemetry=on_event)
    from kasmina_fast.cli import hf

    if cfg.host == "hf-resnet":
        model = hf.resnet(num_classes=10, in_channels=1, widths=(width, 2 * width))
    else:
        model = hf.gpt2(vocab_size=vocab, block_size=BLOCK, n_embd=width, n_layer=2, n_head=4)
    return kf.graft(
        model.to(cfg.device),
        slots,
        example_input=example,
        task_config=tc,
        device=cfg.device,
        on_telemetry=on_event,
    )


def logits(out) -> Tensor:
    """The model's output as logits (a Hugging Face model returns a ``ModelOutput``)."""
    return out if isinstance(out, Tensor) else out.logits


def steps_per_epoch(cfg: DemoConfig, data) -> int:
    if cfg.task == "digits":
        steps = len(data[1]) // cfg.batch_size
        return steps if cfg.steps_per_epoch is None else min(steps, cfg.steps_per_epoch)
    return cfg.steps_per_epoch or 40


def batches(cfg: DemoConfig, data, gen: torch.Generator):
    steps = steps_per_epoch(cfg, data)
    if cfg.task == "digits":
        x, y = data
        order = torch.randperm(len(y), generator=gen).to(x.device)
        for i in range(steps):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            yield x[idx], y[idx]
    else:
        codes = data
        for _ in range(steps):
            start = torch.randint(0, len(codes) - BLOCK - 1, (cfg.batch_size,), generator=gen).to(
                codes.device
            )
            pos = start[:, None] + torch.arange(BLOCK + 1, device=codes.device)
            chunk = codes[pos]
            yield chunk[:, :-1], chunk[:, 1:]


def loss_fn(cfg: DemoConfig, out, y: Tensor) -> Tensor:
    out = logits(out)
    return F.cross_entropy(out if cfg.task == "digits" else out.reshape(-1, out.shape[-1]), y.reshape(-1))


@torch.no_grad()
def accuracy(cfg: DemoConfig, model, val) -> float:
    """Validation accuracy in percent (next-character accuracy for text)."""
    model.eval()
    if cfg.task == "digits":
        x, y = val
        acc = (logits(model(x)).argmax(1) == y).float().mean().item()
    else:
        n = (len(val) - 1) // BLOCK
        x = val[: n * BLOCK].view(n, BLOCK)
        y = val[1 : n * BLOCK + 1].view(n, BLOCK)
        acc = (logits(model(x)).argmax(-1) == y).float().mean().item()
    model.train()
    return 100.0 * acc


# ---- the run -------------------------------------------------------------------------------


def run(cfg: DemoConfig) -> DemoResult:
    """Train the host alone, then the same host (same initial weights, same batches)
    growing a seed; the summary compares the two."""
    if cfg.task not in HOSTS:
        raise ValueError(f"demo: unknown task {cfg.task!r}")
    if cfg.host not in HOSTS[cfg.task]:
        raise SystemExit(
            f"demo: --host {cfg.host} is not a host of --task {cfg.task}: {', '.join(HOSTS[cfg.task])}"
        )
    if cfg.task == "digits":
        xt, yt, xv, yv = digits_data(cfg.seed, cfg.device)
        train, val, vocab = (xt, yt), (xv, yv), 10
    else:
        train, val, vocab = text_data(cfg.seed, cfg.device)
    alone = _train(cfg, train, val, vocab, grow=False)
    grown = _train(cfg, train, val, vocab, grow=True)
    model, history, events = grown["model"], grown["history"], grown["events"]
    slot = model.seed_slots[grown["slot_id"]]
    summary = {
        "task": cfg.task,
        "host": type(model.host.model if isinstance(model.host, kf.ModuleHost) else model.host).__name__,
        "accuracy_host_alone": alone["history"][-1]["val_acc"],
        "params_host_alone": alone["model"].total_params,
        "accuracy_grown": history[-1]["val_acc"],
        "params_grown": model.total_params,
        "accuracy_at_germination": grown["acc_at_germination"],
        "outcome": next(
            (e.event_type.value for e in events if e.event_type.name in ("SEED_FOSSILIZED", "SEED_CULLED")),
            None,
        ),
        "seed_params_added": model.active_seed_params if slot.stage == S.FOSSILIZED else 0,
        "counterfactual": next(
            (h["counterfactual"] for h in reversed(history) if h["counterfactual"] is not None), None
        ),
        "step_ms": _median(grown["step_times"]) * 1e3,
    }
    summary |= _time_backends(cfg, model, train, torch.Generator().manual_seed(cfg.seed))
    if cfg.plot:
        plot_timeline(
            history,
            cfg.plot,
            title=f"kasmina-fast demo ({cfg.task}, {summary['host']})",
            baseline=alone["history"],
        )
    return DemoResult(history, events, summary)


def _train(cfg: DemoConfig, train, val, vocab: int, grow: bool) -> dict[str, Any]:
    """One run of ``cfg.epochs``; with ``grow``, the controller grows a seed in the first slot."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)  # the same initial host weights in both runs
    gen = torch.Generator().manual_seed(cfg.seed)  # the same batches
    events: list[kf.TelemetryEvent] = []
    epoch_now = [0]
    label = "grown" if grow else "host alone"

    def on_event(e: kf.TelemetryEvent) -> None:
        events.append(e)
        if not cfg.quiet and e.event_type == kf.TelemetryEventType.SEED_STAGE_CHANGED:
            tqdm.write(f"  epoch {epoch_now[0]:>2}: slot {e.slot_id} {e.data['from']} -> {e.data['to']}")

    example = next(batches(dataclasses.replace(cfg, steps_per_epoch=1), train, torch.Generator()))[0][:2]
    try:
        model = build(cfg, vocab, example, on_event)
    except ValueError as exc:  # a slot the host does not have
        raise SystemExit(f"demo: {exc}") from None
    slot_id = model.slot_ids[0] if cfg.slots is None else cfg.slots[0]
    slot = model.seed_slots[slot_id]
    forward = torch.compile(model, fullgraph=True) if cfg.compile else model
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    total = steps_per_epoch(cfg, train)
    # cosine decay to 0, so the last epochs' accuracy is a converged one, not one noisy
    # step's; the seed's param group follows it (kf.sync_optimizer, inside the Grower)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / (cfg.epochs * total)))
    )
    blueprint = cfg.blueprint or ("conv_light" if cfg.task == "digits" else "mlp")
    policy = kf.HeuristicPolicy(
        blueprint,
        slots=[slot_id],
        germinate_at=max(0, cfg.germinate_epoch - 1),  # at the end of the epoch before
        patience=cfg.patience,
        max_germinations=1,
    )
    grower = kf.Grower(
        model,
        opt,
        evaluate=lambda: accuracy(cfg, forward, val),
        lr_scheduler=sched,
        policy=policy,
        telemetry_every=5,  # strided gradient telemetry: device tensors, no sync
    )
    history: list[dict[str, Any]] = []
    acc_at_germination = None
    step_times: list[float] = []
    if not cfg.quiet:
        tqdm.write(f"-- {label}: {model.total_params} parameters")
    with kf.use_backend(cfg.backend):
        for epoch in range(cfg.epochs):
            epoch_now[0] = epoch
            bar = tqdm(
                batches(cfg, train, gen),
                total=total,
                desc=f"{label} epoch {epoch:>2}",
                unit="batch",
                leave=False,
                disable=cfg.quiet,
            )
            for x, y in bar:
                t0 = time.perf_counter()
                loss = loss_fn(cfg, forward(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grow:
                    grower.after_backward()
                opt.step()
                sched.step()
                step_times.append(time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if grow:  # measure, step the lifecycle, the policy, the optimizer
                report = grower.end_epoch()
                acc, contribution = report.metric, report.counterfactuals.get(slot_id)
                if report.decisions and report.decisions[0].startswith("germinate"):
                    acc_at_germination = acc
            else:
                acc, contribution = accuracy(cfg, forward, val), None
            row = {"epoch": epoch, "val_acc": acc, "alpha": float(slot.alpha), "stage": slot.stage.name}
            history.append(row | {"counterfactual": contribution})
            if not cfg.quiet and grow:
                cf = "" if contribution is None else f", counterfactual {contribution:+.2f}"
                line = (
                    f"epoch {epoch:>2}: val acc {acc:6.2f}%  {row['stage']:<12} alpha {row['alpha']:.2f}{cf}"
                )
                tqdm.write(line)
            elif not cfg.quiet:
                tqdm.write(f"epoch {epoch:>2}: val acc {acc:6.2f}%")
    return {
        "model": model,
        "history": history,
        "events": events,
        "step_times": step_times,
        "acc_at_germination": acc_at_germination,
        "slot_id": slot_id,
    }


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2] if xs else float("nan")


def _time_backends(cfg: DemoConfig, model, train, gen) -> dict[str, float]:
    """Median fwd+bwd step time of the final model with the fast ops and with the reference."""
    x, y = next(batches(dataclasses.replace(cfg, steps_per_epoch=1), train, gen))
    out = {}
    for name in ("auto", "reference"):
        times = []
        with selected(name):
            for _ in range(12):
                t0 = time.perf_counter()
                loss_fn(cfg, model(x), y).backward()
                times.append(time.perf_counter() - t0)
        out[f"step_ms_{'fast' if name == 'auto' else 'reference'}"] = _median(times[2:]) * 1e3
    model.zero_grad(set_to_none=True)
    return out


def plot_timeline(
    history: list[dict[str, Any]], path: str, title: str = "", baseline: list[dict[str, Any]] | None = None
) -> None:
    """Validation accuracy and alpha per epoch over coloured stage bands (and the host
    alone's accuracy, grey, when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {
        "TRAINING": "#cfe8ff",
        "BLENDING": "#ffe7b3",
        "PROBATIONARY": "#e6d3ff",
        "FOSSILIZED": "#c8f0c8",
        "CULLED": "#ffc8c8",
        "EMBARGOED": "#eeeeee",
        "RESETTING": "#eeeeee",
    }
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5), sharex=True, height_ratios=(2, 1))
    for h in history:
        for ax in (ax1, ax2):
            ax.axvspan(h["epoch"] - 0.5, h["epoch"] + 0.5, color=colours.get(h["stage"], "white"), lw=0)
    if baseline:
        ax1.plot([h["epoch"] for h in baseline], [h["val_acc"] for h in baseline], "--", color="#888888")
    ax1.plot(epochs, [h["val_acc"] for h in history], "o-", color="#1f4e79")
    ax1.set_ylabel("validation accuracy (%)")
    ax2.plot(epochs, [h["alpha"] for h in history], "s-", color="#b35900")
    ax2.set_ylabel("alpha")
    ax2.set_xlabel("epoch")
    ax2.set_ylim(-0.05, 1.05)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=c) for s, c in colours.items() if s in {h["stage"] for h in history}
    ]
    labels = [s for s in colours if s in {h["stage"] for h in history}]
    if baseline:
        handles.append(plt.Line2D([0], [0], ls="--", color="#888888"))
        labels.append("host alone")
    ax1.legend(handles, labels, loc="lower right", fontsize=8)
    ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_summary(result: DemoResult) -> None:
    s = result.summary

    def f(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    gain = s["accuracy_grown"] - s["accuracy_host_alone"]
    rows = [
        ("task, host", f"{s['task']}, {s['host']}"),
        ("host alone: accuracy", f"{s['accuracy_host_alone']:.2f}% ({s['params_host_alone']} parameters)"),
        ("grown: accuracy", f"{s['accuracy_grown']:.2f}% ({s['params_grown']} parameters)"),
        ("growth paid", f"{gain:+.2f} points for {s['params_grown'] - s['params_host_alone']} parameters"),
        ("accuracy when the seed germinated", f(s["accuracy_at_germination"], "{:.2f}%")),
        ("seed outcome", s["outcome"] or "undecided"),
        ("seed parameters added", str(s["seed_params_added"])),
        ("last counterfactual (points)", f(s["counterfactual"], "{:+.2f}")),
        ("train step (this run)", f(s["step_ms"], "{:.2f} ms")),
        ("fwd+bwd, fast ops", f(s["step_ms_fast"], "{:.2f} ms")),
        ("fwd+bwd, eager reference ops", f(s["step_ms_reference"], "{:.2f} ms")),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    print("summary")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("digits", "text"), default="digits")
    p.add_argument(
        "--host",
        choices=("builtin", "hf-resnet", "gpt2"),
        default="builtin",
        help="builtin: CNNHost (digits) / TransformerHost (text); hf-resnet (digits) and gpt2 (text): "
        "Hugging Face models grafted with kasmina_fast.graft (the hf extra)",
    )
    p.add_argument(
        "--width", type=int, default=None, help="the host's width (default: small, so growth pays)"
    )
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap the training steps per epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile(fullgraph=True) the model")
    p.add_argument("--backend", choices=kf.backends.CHOICES, default="auto")
    p.add_argument("--plot", metavar="FILE.png", help="write a timeline plot")
    p.add_argument(
        "--slots",
        nargs="+",
        default=None,
        metavar="NAME",
        help="injection points (early mid late, or per block; module paths with --host hf-resnet or "
        "gpt2); the seed grows in the first",
    )
    p.add_argument("--quiet", action="store_true")


def main(args: argparse.Namespace) -> int:
    if args.epochs < 1 or args.batch_size < 1 or (args.width is not None and args.width < 4):
        raise SystemExit("demo: --epochs and --batch-size must be >= 1, --width >= 4")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("demo: --device cuda asked for, but no CUDA device is visible")
    cfg = DemoConfig(
        task=args.task,
        epochs=args.epochs,
        batch_size=args.batch_size,
        steps_per_epoch=args.steps_per_epoch,
        seed=args.seed,
        device=args.device,
        compile=args.compile,
        backend=args.backend,
        plot=args.plot,
        quiet=args.quiet,
        host=args.host,
        width=args.width,
        slots=None if args.slots is None else tuple(args.slots),
    )
    result = run(cfg)
    print_summary(result)
    if args.plot:
        print(f"\ntimeline written to {args.plot}")
    return 0
