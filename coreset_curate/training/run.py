"""The run-level trainer: full-precision training or QAT that re-scores and re-selects its
data every R epochs.

    coreset-curate train --recipe recipes/cifar10_resnet20_fp.yaml --out runs/teacher
    coreset-curate train --recipe recipes/NAME.yaml --set fraction=0.3 --out RUN [--resume]

A readable loop over library pieces: ``AdaptiveSelector.subset`` (score and select when a
round is due) -> ``train_epoch`` -> ``evaluate``. What differs between tasks (the model,
the transforms, the loss, one epoch, the metric that picks the best epoch) comes from the
task of the recipe's ``model`` (``tasks.task_for_model``), which must be the task of its
data. RUN_DIR receives ``config.yaml`` (the
resolved settings), ``scores/`` (one table per scoring round), ``index.parquet`` (every
epoch's subset), ``last.pt`` and ``best.pt`` (checkpoints), ``metrics.jsonl`` (one line
per epoch, with the time spent scoring, selecting, training and evaluating), ``model.pt``
(final weights) and ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..common.atomic import write_text
from ..common.checks import resolve_device
from ..common.cores import CoreWatch, check_cores
from ..common.checkpoint import load_state, save_atomic, sha256_of
from ..common.distributed import barrier, distributed_context, rank_plan
from ..selection.selector import AdaptiveSelector, RoundScorer
from ..tasks import EpochInputs, Task, task_for_model
from .config import FULL, RESUMABLE_CHANGES, TrainConfig
from .recipe import PATH_KEYS, same_path, write_config
from .schedule import ProgressLR, build_optimizer
from .setup import build_models, load_splits

__all__ = ["run_training"]

log = logging.getLogger(__name__)

# score tables keep the whole softmax up to this many classes (CIFAR-100: 400 bytes a
# sample and round; ImageNet-1K would need 4 kB, so it gets none)
MAX_PROBS_CLASSES = 256
STAGES = ("scoring_s", "selection_s", "train_s", "eval_s")


def _device(config: TrainConfig, world: int) -> torch.device:
    device = resolve_device(config.device, "device")
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def _set_backends(config: TrainConfig, device: torch.device) -> None:
    """Threads, the seed and the kernels: process-wide settings a run owns."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels


def _logged_epoch(line: str) -> int:
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn or foreign line: dropped


def _prepare_folder(out: Path, resume: bool, overwrite: bool, world: int, main: bool) -> None:
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise FileExistsError(f"{out} is not empty; pass --resume to continue the run there or "
                              "--overwrite to start again")
    if resume and not (out / "last.pt").exists():
        log.info("no checkpoint in %s: starting from scratch", out)
    barrier(world)  # every rank has checked the folder before rank 0 writes to it
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "scores").mkdir(exist_ok=True)
        if overwrite and not resume:
            (out / "index.parquet").unlink(missing_ok=True)  # starting again: no old subsets
    barrier(world)


class _Run:
    """The state a checkpoint holds, besides the model and optimizer."""

    def __init__(self, metric: str = "top1") -> None:
        # metric: what picks the best epoch (the task's: top-1, COCO AP)
        self.metric = metric
        self.start_epoch, self.best, self.calibrated = 0, -1.0, None
        self.shared = False
        self.totals = {k: 0.0 for k in (*STAGES, "wall_s")}

    def resume_from(self, state: dict, config: TrainConfig, out: Path) -> None:
        saved = state.get("config", {})
        changed = sorted(k for k, v in asdict(config).items()
                         if k in saved and saved[k] != v and k not in RESUMABLE_CHANGES
                         and not (k in PATH_KEYS and same_path(k, saved[k], v)))
        if changed:
            raise ValueError(f"cannot resume {out} with other settings: {changed} differ from "
                             "the run's (start a new run, or resume with the same recipe)")
        self.start_epoch = int(state["epoch"])
        self.best = float(state[f"best_{self.metric}"])
        self.calibrated = state.get(f"calibrated_{self.metric}")
        self.shared = bool(state.get("cores_oversubscribed", False))
        self.totals.update({k: float(v) for k, v in state["totals"].items()})


def _selector(config: TrainConfig, train, eval_tf, reference, digest, out: Path, device,
              score_bs: int) -> tuple[AdaptiveSelector | None, RoundScorer]:
    """The run's selector (None for full data) and the scorer of its rounds."""
    scoring = dict(reference=reference, out=out, batch_size=score_bs, device=device,
                   probs=train.num_classes <= MAX_PROBS_CLASSES, reference_key=digest,
                   metadata={"arch": config.model, "run": str(out)})
    if config.method == FULL:
        return None, RoundScorer(train, eval_tf, **scoring)
    selector = AdaptiveSelector(
        train, config.method, config.fraction, epochs=config.epochs,
        reselect_every=config.reselect_every, schedule=config.schedule, seed=config.seed,
        per_class=config.per_class, min_per_class=config.min_per_class,
        options=config.method_options, transform=eval_tf, free_scores=config.free_scores,
        exclude=config.exclude, audit_every=config.audit_every, **scoring)
    return selector, selector.scorer


def _keep_metrics(out: Path, start_epoch: int) -> None:
    """Keep the lines of the epochs the checkpoint holds: a run killed between logging an
    epoch and checkpointing it logs that epoch again when resumed."""
    path = out / "metrics.jsonl"
    if path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and _logged_epoch(line) < start_epoch]
        write_text(path, "".join(line + "\n" for line in kept))


@dataclass
class _Parts:
    """Everything one epoch uses."""

    config: TrainConfig
    out: Path
    train: object
    test: object
    train_tf: object
    eval_tf: object
    model: torch.nn.Module
    train_model: torch.nn.Module
    teacher: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    lr_sched: ProgressLR
    gen: torch.Generator
    selector: AdaptiveSelector | None
    scorer: RoundScorer | None
    device: torch.device
    eval_bs: int
    rank: int
    world: int
    task: Task

    @property
    def metric(self) -> str:
        return self.task.metric


def _train_one(p: _Parts, epoch: int) -> tuple[float, float, int, dict]:
    """Select (when due) and train one epoch: (loss, lr, subset size, stage seconds)."""
    c, t = p.config, dict.fromkeys(STAGES, 0.0)
    if p.selector is None:
        positions, weights, subset_size = None, None, len(p.train)
    else:
        positions, weights = p.selector.positions(epoch, p.model)
        t.update(p.selector.last)
        subset_size = len(positions)
    t0 = time.perf_counter()
    plan, aug_gen = None, p.gen
    if p.world > 1:
        # the same shuffle on every rank, then rank r takes slice r of each global batch
        shuffle_gen = torch.Generator().manual_seed(c.seed * 1_000_003 + epoch)
        plan = rank_plan(np.arange(len(p.train)) if positions is None else positions,
                         c.batch_size, p.rank, p.world, shuffle_gen)
        aug_gen = torch.Generator().manual_seed((c.seed * 1009 + epoch) * 1009 + p.rank)
        batches = len(plan)
    else:
        batches = -(-subset_size // c.batch_size)
    p.lr_sched.begin_epoch(epoch, batches)
    lr_now = p.lr_sched.lr
    teacher = p.teacher if (c.mode == "qat" and c.kd) else None
    loss = p.task.train_epoch(EpochInputs(
        p.train_model, p.train, p.train_tf, p.optimizer, positions, weights, teacher, c,
        aug_gen, p.lr_sched, p.device, plan,
        on_batch=p.selector.record if c.free_scores and p.selector else None))
    t["train_s"] = time.perf_counter() - t0
    return loss, lr_now, subset_size, t


def _checkpoint(p: _Parts, run: _Run, epoch: int, improved: bool) -> None:
    """Atomic checkpoints: everything needed to continue exactly from here."""
    if improved:
        save_atomic(p.model.state_dict(), p.out / "best.pt")
    save_atomic({"model": p.model.state_dict(), "optimizer": p.optimizer.state_dict(),
                 "generator": p.gen.get_state(), "torch_rng": torch.get_rng_state(),
                 "epoch": epoch + 1, f"best_{run.metric}": run.best, "totals": run.totals,
                 f"calibrated_{run.metric}": run.calibrated, "config": asdict(p.config),
                 "cores_oversubscribed": run.shared,
                 **({"selector": p.selector.state_dict()} if p.config.free_scores
                    and p.selector is not None else {})},
                p.out / "last.pt")


def _evaluate(p: _Parts) -> dict[str, float]:
    """The test split's metrics, the task's: ``{"top1": percent}``, or COCO AP
    (``ap``, ``ap50``, ``ap75``, fractions)."""
    return p.task.evaluate(p.model, p.test, p.eval_tf, batch_size=p.eval_bs, device=p.device)


def _eval_due(config: TrainConfig, epoch: int) -> bool:
    """Whether the test split is evaluated after ``epoch`` (counted from 0): every epoch,
    or those of ``eval_epochs`` (counted from 1) and the last."""
    return (config.eval_epochs is None or epoch + 1 == config.epochs
            or epoch + 1 in config.eval_epochs)


def _epoch(p: _Parts, run: _Run, epoch: int, t_wall: float, watch: CoreWatch | None = None
           ) -> tuple[dict[str, float] | None, float]:
    """One epoch: select, train, and on rank 0 evaluate, log and checkpoint. Returns
    (the test metrics or None on other ranks, the wall clock mark). ``watch``: what it saw
    of the cores during the epoch goes into the checkpoint."""
    loss, lr_now, subset_size, t = _train_one(p, epoch)
    if p.rank != 0:
        barrier(p.world)  # rank 0 evaluates and checkpoints
        return None, t_wall
    t0 = time.perf_counter()
    due = _eval_due(p.config, epoch)
    scores = _evaluate(p) if due else {}
    t["eval_s"] = time.perf_counter() - t0
    for k in t:
        run.totals[k] += t[k]
    now = time.perf_counter()
    run.totals["wall_s"] += now - t_wall  # wall time of every sitting, setup included
    improved = due and scores[run.metric] > run.best
    if due:
        run.best = max(run.best, scores[run.metric])
    line = {"epoch": epoch, "lr": lr_now, "train_loss": loss, **scores,
            **({f"best_{run.metric}": run.best} if due else {}), "subset_size": subset_size,
            **{k: round(v, 3) for k, v in t.items()}}
    log.info("epoch %d/%d: loss %.4f, %s, %d samples, score %.1fs select %.2fs train %.1fs "
             "eval %.1fs", epoch + 1, p.config.epochs, loss,
             p.task.shown(scores, run.best) if due else "not evaluated", subset_size,
             t["scoring_s"], t["selection_s"], t["train_s"], t["eval_s"])
    with open(p.out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(line) + "\n")
    run.shared = run.shared or (watch is not None and watch.shared)
    _checkpoint(p, run, epoch, improved)
    barrier(p.world)
    return scores, now


def _summary(p: _Parts, run: _Run, scores: dict[str, float], t_wall: float) -> dict:
    c = p.config
    save_atomic(p.model.state_dict(), p.out / "model.pt")
    summary = {
        "model": c.model, "mode": c.mode, "teacher_model": c.teacher_model,
        "w_bits": c.w_bits if c.mode == "qat" else 32,
        "a_bits": c.a_bits if c.mode == "qat" else 32,
        "method": c.method, "fraction": c.fraction, "epochs": c.epochs,
        "R": c.reselect_every, "seed": c.seed, **scores, f"best_{run.metric}": run.best,
        f"calibrated_{run.metric}": run.calibrated,
        **{k: round(v, 2) for k, v in run.totals.items()},
        "wall_s": round(run.totals["wall_s"] + time.perf_counter() - t_wall, 2),
        "train_samples": len(p.train), "test_samples": len(p.test), "device": str(p.device),
        # whether another process's threads shared the cores at some check (times inflated)
        "cores_oversubscribed": run.shared,
        "model_sha256": sha256_of(p.out / "model.pt"),
    }
    write_text(p.out / "summary.json", json.dumps(summary, indent=2))
    return summary


def _build(config: TrainConfig, out: Path, resume: bool, rank: int, world: int
           ) -> tuple[_Parts, _Run]:
    """Data, models, optimizer and selector of a run, resumed from its checkpoint."""
    device = _device(config, world)
    _set_backends(config, device)
    task = task_for_model(config.model)
    eval_bs = config.eval_batch_size or task.inference_batch_size(device)
    score_bs = config.score_batch_size or task.inference_batch_size(device)
    train, test = load_splits(config, out, rank == 0)
    train_tf, eval_tf = task.transforms(train, config)
    model, teacher, reference, digest = build_models(config, train, eval_tf, device)
    optimizer = build_optimizer(model, config)
    p = _Parts(config, out, train, test, train_tf, eval_tf, model, model, teacher, optimizer,
               ProgressLR(optimizer, config), torch.Generator().manual_seed(config.seed),
               None, None, device, eval_bs, rank, world, task)
    p.train_model = task.train_model(model, config)
    run, last_ckpt = _Run(p.metric), out / "last.pt"
    if config.mode == "qat" and rank == 0 and not (resume and last_ckpt.exists()):
        scores = _evaluate(p)
        run.calibrated = scores[p.metric]
        log.info("W%dA%d after calibration, before QAT: %s", config.w_bits, config.a_bits,
                 task.shown(scores))
    if resume and last_ckpt.exists():
        state = load_state(last_ckpt)
        run.resume_from(state, config, out)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        p.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resuming %s at epoch %d", out, run.start_epoch)
    if rank == 0:
        write_config(config, out)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if config.compile:
            log.warning("compile is off under torchrun")
        p.train_model = DistributedDataParallel(p.train_model)
    elif config.compile:
        p.train_model = torch.compile(model)
    p.selector, p.scorer = _selector(config, train, eval_tf, reference, digest, out, device,
                                     score_bs)
    if resume and last_ckpt.exists() and "selector" in state and p.selector is not None:
        p.selector.load_state_dict(state["selector"])  # the training steps' scores
    if rank == 0:
        _keep_metrics(out, run.start_epoch)
    return p, run


def run_training(config: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False,
                 overwrite: bool = False, stop_after: int | None = None) -> dict | None:
    """Run (or resume) the training ``config`` describes into ``out_dir``; returns the summary.

    Args:
        config: the run's settings.
        out_dir: the run folder (checkpoints, metrics, scores, index, summary).
        resume: continue the run in ``out_dir`` from its last checkpoint.
        overwrite: start again in a folder that is not empty.
        stop_after: train at most N epochs in this call (for machines with time limits;
            continue with ``resume=True``).

    Returns:
        The run's summary (also ``out_dir/summary.json``), or None when ``stop_after``
        ended the call before the last epoch.

    Raises:
        FileExistsError: ``out_dir`` is not empty and neither ``resume`` nor
            ``overwrite`` is given.
        ValueError: the data, checkpoints or a resumed run's settings do not fit the
            config.
    """
    out = Path(out_dir)
    resolve_device(config.device, "device")  # a missing GPU fails before the folder is touched
    rank, world = distributed_context()  # (0, 1) unless started by torchrun
    _prepare_folder(out, resume, overwrite, world, rank == 0)
    t_wall = time.perf_counter()
    p, run = _build(config, out, resume, rank, world)
    end = config.epochs if stop_after is None else min(config.epochs,
                                                        run.start_epoch + stop_after)
    scores = None
    # warns once: whether other processes' threads share the cores (times inflated), read
    # at the start, after each epoch and, in one process, every few seconds between
    run.shared = run.shared or (rank == 0 and bool(check_cores()))
    with CoreWatch() if world == 1 and not run.shared else nullcontext() as watch:
        for epoch in range(run.start_epoch, end):
            scores, t_wall = _epoch(p, run, epoch, t_wall, watch)
            if rank == 0 and not run.shared:
                run.shared = bool(check_cores())
    if end < config.epochs:
        log.info("stopped after epoch %d of %d; continue with --resume", end, config.epochs)
        return None
    if rank != 0:
        return None
    if scores is None:  # resumed a finished run
        scores = _evaluate(p)
    if config.score_final and not p.scorer.round_path(config.epochs).exists():
        t0 = time.perf_counter()
        path = p.scorer.score(p.model, config.epochs, final=True)
        run.totals["scoring_s"] += time.perf_counter() - t0
        log.info("scored the finished model: %s (%.1fs)", path, time.perf_counter() - t0)
    return _summary(p, run, scores, t_wall)
