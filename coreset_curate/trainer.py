"""The run-level trainer: full-precision training or QAT that re-scores and re-selects its
data every R epochs.

    coreset-curate train --recipe recipes/cifar10_resnet20_fp.yaml --out runs/teacher
    coreset-curate train --recipe recipes/NAME.yaml --set fraction=0.3 --out RUN [--resume]

A readable loop over library pieces: ``score_dataset`` -> ``select`` -> ``train_epoch`` ->
``evaluate``. RUN_DIR receives ``config.yaml`` (the resolved settings), ``scores/`` (one
table per scoring round), ``index.parquet`` (every epoch's subset), ``last.pt`` and
``best.pt`` (checkpoints), ``metrics.jsonl`` (one line per epoch, with the time spent
scoring, selecting, training and evaluating), ``model.pt`` (final weights) and
``summary.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .atomic import atomic_path, write_text
from .data import default_transforms, inference_batch_size, iter_batches, load_data
from .hf import epoch_rows, read_index
from .models import create_model
from .quant import LsqQuantizer, calibrate_, quantize_model
from .refcache import cached_reference
from .scores import score_dataset
from .selection import METHODS, SCHEDULES, add_to_index, select
from .tables import write_table
from .extract import distributed_context
from .training import evaluate, rank_plan, train_epoch

__all__ = ["TrainConfig", "run_training", "load_recipe", "sha256_of"]

log = logging.getLogger(__name__)

FULL = "full"
# score tables keep the whole softmax up to this many classes (CIFAR-100: 400 bytes a
# sample and round; ImageNet-1K would need 4 kB, so it gets none)
MAX_PROBS_CLASSES = 256
# settings that may differ when a run is resumed: how it runs, not what it trains
# (score_final only adds a scoring round of the finished model)
RESUMABLE_CHANGES = {"device", "num_threads", "eval_batch_size", "score_batch_size", "compile",
                     "score_final"}


@dataclass
class TrainConfig:
    """Every setting of a run; recipes are YAML files of these keys."""

    data: str = "digits"
    train_split: str = "train"
    test_split: str = "test"
    model: str = "resnet20"
    model_kwargs: dict = field(default_factory=dict)
    mode: str = "fp"  # "fp" (full-precision training) or "qat"
    w_bits: int = 4
    a_bits: int = 4
    per_channel: bool = True
    first_last: str = "int8"
    quant_init: str = "mse"
    calibration_batches: int = 4
    # full-precision checkpoint of the teacher (distillation); without `init`, also the QAT
    # starting point and the reference of the disagreement score (DS)
    teacher: str | None = None
    teacher_sha256: str | None = None
    teacher_model: str | None = None  # the teacher's architecture (default: model)
    teacher_model_kwargs: dict = field(default_factory=dict)
    # full-precision checkpoint of the student's architecture: where training starts and the
    # DS reference (the paper's ImageNet runs start ResNet-18 here, distil from ResNet-101)
    init: str | None = None
    init_sha256: str | None = None
    kd: bool = True  # distil from the teacher in QAT (soft cross-entropy, T = 1)
    label_weight: float = 0.0  # weight of the label cross-entropy added to distillation
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" or "adam"
    lr: float = 0.1
    step_lr: float | None = None  # learning rate of the LSQ step sizes (default: lr)
    # learning rate of the 8-bit quantizers' step sizes (the first and last layers with
    # first_last: int8; default: step_lr): an 8-bit step is small, and at step_lr one
    # update can move it by more than its own size
    step_lr_8bit: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"  # "cosine" or "constant", over the run's real steps
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    method: str = FULL  # "full" or a registered selection method
    fraction: float = 1.0
    reselect_every: int = 10
    schedule: str = "cos"
    per_class: bool = True
    min_per_class: int = 0
    method_options: dict = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False  # deterministic kernels (bit-exact GPU runs, slower)
    num_threads: int | None = None
    eval_batch_size: int | None = None  # None: 256 on CPU (fastest there), 1024 on CUDA
    score_batch_size: int | None = None  # likewise
    limit_train: int | None = None  # only the first N training rows (smoke runs, tests)
    limit_test: int | None = None
    # decode images batch by batch instead of into memory (ImageNet), cropped to crop_size:
    # random resized crops to train, centre crops of the shorter side resized to resize_size
    # (default crop_size / 0.875) to score and evaluate; decoded by data_workers processes
    stream: bool = False
    crop_size: int | None = None
    resize_size: int | None = None
    data_workers: int | None = None
    # normalisation, one number per channel on the [0, 1] scale (default: the training
    # split's statistics); pretrained torchvision models need ImageNet's
    mean: list | None = None
    std: list | None = None
    # injected label noise for experiments, e.g. {type: symmetric, rate: 0.2, seed: 0}:
    # training labels are flipped, and RUN_DIR/labels.parquet keeps the true ones
    label_noise: dict | None = None
    # score the finished model as one more round, scores/epoch_{epochs}.parquet (the audit's
    # best view: the model after its last epoch; the selection rounds precede their epoch)
    score_final: bool = False

    def __post_init__(self) -> None:
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")

        for name in ("epochs", "batch_size", "reselect_every", "calibration_batches"):
            positive_int(name)
        for name in ("limit_train", "limit_test", "num_threads", "eval_batch_size",
                     "score_batch_size", "crop_size", "resize_size"):
            if getattr(self, name) is not None:
                positive_int(name)
        if self.data_workers is not None and (isinstance(self.data_workers, bool) or not
                                              isinstance(self.data_workers, int)
                                              or self.data_workers < 0):
            raise ValueError(f"data_workers must be a non-negative integer; got "
                             f"{self.data_workers!r}")
        for name in ("per_channel", "kd", "nesterov", "per_class", "channels_last", "compile",
                     "deterministic", "score_final", "stream"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false; got {getattr(self, name)!r}")
        if self.mode not in ("fp", "qat"):
            raise ValueError(f"mode must be 'fp' or 'qat'; got {self.mode!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam'; got {self.optimizer!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant'; got {self.lr_schedule!r}")
        if self.method != FULL and self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; use 'full' or one of "
                             f"{sorted(METHODS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; registered: {sorted(SCHEDULES)}")
        if not (isinstance(self.fraction, (int, float)) and 0 < self.fraction <= 1):
            raise ValueError(f"fraction must be a number in (0, 1]; got {self.fraction!r}")
        for name in ("lr", "weight_decay", "momentum", "warmup_epochs", "label_weight",
                     "label_smoothing") + tuple(k for k in ("step_lr", "step_lr_8bit")
                                                if getattr(self, k) is not None):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name} must be a non-negative number; got {v!r}")
        if self.mode == "qat" and not (self.teacher or self.init):
            raise ValueError("QAT starts from a full-precision checkpoint: set teacher=PATH "
                             "(or init=PATH)")
        if self.mode == "qat" and self.kd and not self.teacher:
            raise ValueError("kd=true distils from a teacher: set teacher=PATH (or kd=false)")
        if self.teacher_model not in (None, self.model) and not self.init and self.teacher:
            raise ValueError(f"the teacher is a {self.teacher_model!r}, the student a "
                             f"{self.model!r}: set init=PATH, a full-precision checkpoint of "
                             "the student's architecture to start from")
        if not self.stream and (self.crop_size or self.resize_size or self.data_workers):
            raise ValueError("crop_size, resize_size and data_workers apply to stream=true")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda[:N]; got {self.device!r}")
        for name in ("teacher_sha256", "init_sha256"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, str)
                                      and re.fullmatch(r"[0-9a-f]{64}", v.lower())):
                raise ValueError(f"{name} must be a 64-character hex string (quote it in "
                                 f"YAML); got {v!r}")
        if self.label_noise is not None:
            from .noise import NOISE_TYPES

            ln = self.label_noise
            if not isinstance(ln, dict) or set(ln) - {"type", "rate", "seed", "flips"} \
                    or "rate" not in ln:
                raise ValueError("label_noise must be a mapping with rate and optional type "
                                 f"({'/'.join(NOISE_TYPES)}), seed and flips; got {ln!r}")
            if ln.get("type", "symmetric") not in NOISE_TYPES:
                raise ValueError(f"label_noise type must be one of {NOISE_TYPES}; got "
                                 f"{ln.get('type')!r}")

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown recipe key(s) {unknown}; accepted keys: {sorted(known)}")
        return cls(**values)


def load_recipe(path: str | os.PathLike | None, overrides: list[str] = ()) -> TrainConfig:
    """A ``TrainConfig`` from a YAML recipe and ``key=value`` overrides (values in YAML).

    A recipe may start from another with ``base: OTHER.yaml`` (relative to itself) and
    change only some keys.
    """
    values: dict[str, Any] = {} if path is None else _recipe_values(Path(path), [])
    values.update(parse_assignments(overrides, "--set"))
    return TrainConfig.from_dict(values)


def parse_assignments(items, flag: str) -> dict[str, Any]:
    """``["key=value", ...]`` as a dict, each value read as YAML (``0.3``, ``true``, ``[1, 2]``,
    or a plain string)."""
    import yaml

    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} takes KEY=VALUE; got {item!r}")
        try:
            values[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f"{flag} {item!r}: the value is not valid YAML ({err})") from err
    return values


def _recipe_values(path: Path, seen: list[Path]) -> dict:
    """A recipe's settings; ``base: FILE`` (relative to the recipe) inherits another's."""
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    if path.resolve() in seen:
        raise ValueError(f"recipe {path} inherits from itself through 'base'")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"recipe {path} must be a YAML mapping of settings")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    return {**_recipe_values(path.parent / str(base), [*seen, path.resolve()]), **loaded}


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _ProgressLR:
    """Learning rate as a function of training progress (epochs done, fractional), so
    that the schedule spans the run's real optimizer steps whatever the subset size."""

    def __init__(self, optimizer, config: TrainConfig) -> None:
        self.optimizer, self.config = optimizer, config
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.epoch, self.batches, self.i = 0, 1, 0

    def begin_epoch(self, epoch: int, batches: int) -> None:
        self.epoch, self.batches, self.i = epoch, max(batches, 1), 0
        self._apply()

    def factor(self, progress: float) -> float:
        c = self.config
        if c.warmup_epochs and progress < c.warmup_epochs:
            return (progress + 1e-3) / c.warmup_epochs
        if c.lr_schedule == "constant":
            return 1.0
        span = max(c.epochs - c.warmup_epochs, 1e-9)
        return 0.5 * (1 + math.cos(math.pi * min((progress - c.warmup_epochs) / span, 1.0)))

    def _apply(self) -> None:
        f = self.factor(self.epoch + self.i / self.batches)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * f

    def step(self) -> None:
        self.i += 1
        self._apply()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def _device(config: TrainConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    eight_bit = {id(m.step) for m in model.modules()
                 if isinstance(m, LsqQuantizer) and m.bits == 8}
    steps, steps8, decay, no_decay = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(".step"):
            (steps8 if id(p) in eight_bit and config.step_lr_8bit is not None
             else steps).append(p)
        elif p.dim() <= 1:
            no_decay.append(p)  # batch-norm weights and biases
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if steps:
        groups.append({"params": steps, "weight_decay": 0.0,
                       "lr": config.step_lr if config.step_lr is not None else config.lr})
    if steps8:
        groups.append({"params": steps8, "weight_decay": 0.0, "lr": config.step_lr_8bit})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0)
    return torch.optim.Adam(groups, lr=config.lr)


def _load_state(path: str | os.PathLike) -> dict:
    """A checkpoint's tensors, loaded without running any code (weights_only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - unpickling refused or corrupt file
        raise ValueError(f"{path} is not a weights-only checkpoint this toolkit can load: "
                         f"{str(err).splitlines()[0]}") from err
    return state


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, *,
                    allow_missing_quantizers: bool = False) -> list[str]:
    """Load a weights-only state dict into ``model`` with errors that say what is wrong.

    With ``allow_missing_quantizers``, a float checkpoint loads into a quantized model and
    the names of the quantizer entries it lacked are returned (calibrate those).
    """
    state = _load_state(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    try:
        result = model.load_state_dict(state, strict=not allow_missing_quantizers)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{path} does not fit this model: {str(err).splitlines()[0]}") from err
    if not allow_missing_quantizers:
        return []
    quant_keys = ("_quant.step", "_quant.initialized", "_quant._extra_state")
    other = [k for k in result.missing_keys if not k.endswith(quant_keys)]
    if other or result.unexpected_keys:
        raise ValueError(f"{path} does not fit this model: missing {other[:5]}, unexpected "
                         f"{result.unexpected_keys[:5]}")
    return list(result.missing_keys)


def _logged_epoch(line: str) -> int:
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn or foreign line: dropped


def _save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _ids_only_table(data) -> pa.Table:
    n = len(data)
    return pa.table({"sample_id": pa.array(data.sample_ids, pa.int64()),
                     "label": pa.array(data.labels.numpy(), pa.int64()),
                     "epoch": pa.array(np.zeros(n, np.int32), pa.int32())})


def run_training(config: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False,
                 overwrite: bool = False, stop_after: int | None = None) -> dict | None:
    """Run (or resume) the training ``config`` describes into ``out_dir``; returns the summary.

    ``stop_after=N`` trains at most N epochs in this call and returns None if the run is
    not finished (continue it with ``resume=True``): for machines with time limits.
    """
    out = Path(out_dir)
    last_ckpt = out / "last.pt"
    rank, world = distributed_context()  # (0, 1) unless started by torchrun
    main_rank = rank == 0
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise FileExistsError(f"{out} is not empty; pass --resume to continue the run there or "
                              "--overwrite to start again")
    if resume and not last_ckpt.exists():
        log.info("no checkpoint in %s: starting from scratch", out)
    _barrier(world)  # every rank has checked the folder before rank 0 writes to it
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        (out / "scores").mkdir(exist_ok=True)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    device = _device(config)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels
    eval_bs = config.eval_batch_size or inference_batch_size(device)
    score_bs = config.score_batch_size or inference_batch_size(device)
    t_wall = time.perf_counter()

    view = ({"stream": True, "crop_size": config.crop_size, "resize_size": config.resize_size,
             "num_workers": config.data_workers} if config.stream else {})
    train = load_data(config.data, config.train_split, **view)
    test = load_data(config.data, config.test_split, **view)
    if config.limit_train:
        train = train.subset(np.arange(min(config.limit_train, len(train))))
    if config.limit_test:
        test = test.subset(np.arange(min(config.limit_test, len(test))))
    if config.label_noise:
        from .noise import inject_noise

        ln = config.label_noise
        noise = inject_noise(train.labels.numpy(), ln["rate"], ln.get("type", "symmetric"),
                             seed=ln.get("seed", 0), num_classes=train.num_classes,
                             flips=ln.get("flips"), class_names=train.class_names)
        if main_rank:
            noise.write(out / "labels.parquet", train.sample_ids,
                        fingerprint=train.fingerprint, overwrite=True)
        log.info("label noise: %d of %d training labels flipped (%s, rate %s)",
                 int(noise.flipped.sum()), len(train), noise.noise_type, noise.rate)
        train = train.with_labels(noise.labels)
    train_tf, eval_tf = default_transforms(train, mean=config.mean, std=config.std)
    in_ch = train.image_shape[0]
    keep_probs = train.num_classes <= MAX_PROBS_CLASSES  # for the audit's channel suspicion

    model = create_model(config.model, num_classes=train.num_classes, in_channels=in_ch,
                         **config.model_kwargs)

    def fp_checkpoint(what: str, path: str, sha256: str | None, arch: str, kwargs: dict):
        """A full-precision model from a weights-only checkpoint, its sha256 checked."""
        digest = sha256_of(path)
        if sha256 and digest != sha256.lower():
            raise ValueError(f"{what} {path} does not have the sha256 the recipe names "
                             f"({sha256})")
        fp = create_model(arch, num_classes=train.num_classes, in_channels=in_ch, **kwargs)
        try:
            fp.load_state_dict(_load_state(path))
        except RuntimeError as err:
            raise ValueError(f"{what} {path} does not fit model {arch!r}: "
                             f"{str(err).splitlines()[0]}") from err
        return fp.eval().requires_grad_(False), digest

    teacher = init = None
    if config.teacher:
        teacher, teacher_digest = fp_checkpoint(
            "teacher", config.teacher, config.teacher_sha256,
            config.teacher_model or config.model,
            config.teacher_model_kwargs if config.teacher_model else config.model_kwargs)
        teacher.to(device)
    if config.init:
        init, init_digest = fp_checkpoint("init", config.init, config.init_sha256, config.model,
                                          config.model_kwargs)
    # the DS reference: the full-precision weights of the student's architecture
    reference, reference_digest = ((init, init_digest) if init is not None else
                                   (teacher, teacher_digest) if teacher is not None else
                                   (None, None))
    if init is not None or config.mode == "qat":
        model.load_state_dict(reference.state_dict())
    if config.mode == "qat":
        model.to(device)
        # calibration batches spread over the split (an image folder lists class by class)
        calib_pos = (np.linspace(0, len(train) - 1, min(len(train),
                                                          256 * config.calibration_batches))
                     .astype(np.int64) if config.stream else None)
        calib = (eval_tf(x.to(device)) for _, x, _ in iter_batches(train, 256, calib_pos))
        quantize_model(model, config.w_bits, config.a_bits, per_channel=config.per_channel,
                       first_last=config.first_last, init=config.quant_init)
        calibrate_(model, calib, max_batches=config.calibration_batches)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    optimizer = _optimizer(model, config)
    lr_sched = _ProgressLR(optimizer, config)
    gen = torch.Generator().manual_seed(config.seed)
    start_epoch, best_top1, totals = 0, -1.0, {"scoring_s": 0.0, "selection_s": 0.0,
                                              "train_s": 0.0, "eval_s": 0.0, "wall_s": 0.0}
    calibrated_top1 = None
    if config.mode == "qat" and main_rank and not (resume and last_ckpt.exists()):
        calibrated_top1 = evaluate(model, test, eval_tf, batch_size=eval_bs,
                                   device=device)
        log.info("W%dA%d after calibration, before QAT: top-1 %.2f%%", config.w_bits,
                 config.a_bits, calibrated_top1)
    if resume and last_ckpt.exists():
        state = _load_state(last_ckpt)
        saved = state.get("config", {})
        changed = sorted(k for k, v in asdict(config).items()
                         if k in saved and saved[k] != v and k not in RESUMABLE_CHANGES)
        if changed:
            raise ValueError(f"cannot resume {out} with other settings: {changed} differ from "
                             "the run's (start a new run, or resume with the same recipe)")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, best_top1 = int(state["epoch"]), float(state["best_top1"])
        calibrated_top1 = state.get("calibrated_top1")
        totals.update({k: float(v) for k, v in state["totals"].items()})
        log.info("resuming %s at epoch %d", out, start_epoch)
    if main_rank:
        _write_config(config, out)
    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if config.compile:
            log.warning("compile is off under torchrun")
        train_model = DistributedDataParallel(model)
    elif config.compile:
        train_model = torch.compile(model)
    index_path = out / "index.parquet"
    index_meta = {"method": config.method, "fraction": config.fraction, "seed": config.seed,
                  "R": config.reselect_every, "schedule": config.schedule,
                  "epochs": config.epochs, "per_class": config.per_class,
                  "options": config.method_options, "fingerprint": train.fingerprint,
                  "sources": []}
    metrics_path = out / "metrics.jsonl"
    if main_rank and metrics_path.exists():
        # keep the lines of the epochs the checkpoint holds: a run killed between logging an
        # epoch and checkpointing it logs that epoch again when resumed
        kept = [line for line in metrics_path.read_text().splitlines()
                if line.strip() and _logged_epoch(line) < start_epoch]
        write_text(metrics_path, "".join(line + "\n" for line in kept))
    top1 = None
    ref_outputs = None

    def round_path(epoch: int) -> Path:
        return out / "scores" / f"epoch_{epoch:04d}.parquet"

    def score_round(epoch: int, **meta) -> Path:
        """Score every training sample with the current student into scores/epoch_E."""
        nonlocal ref_outputs
        if reference is not None and ref_outputs is None:
            # the reference never changes: its outputs are computed once per run
            ref_outputs, _ = cached_reference(
                reference, train, eval_tf, cache_dir=out / "reference-cache",
                checkpoint_sha256=reference_digest, batch_size=score_bs, device=device)
        table = score_dataset(model, train, ref_outputs, transform=eval_tf, epoch=epoch,
                              probs=keep_probs, batch_size=score_bs, device=device,
                              metadata={"arch": config.model, "run": str(out), **meta})
        write_table(table, round_path(epoch), overwrite=True)
        return round_path(epoch)
    end_epoch = config.epochs if stop_after is None else min(config.epochs,
                                                             start_epoch + stop_after)
    for epoch in range(start_epoch, end_epoch):
        t = {"scoring_s": 0.0, "selection_s": 0.0, "train_s": 0.0, "eval_s": 0.0}
        # 1. score and select (every R epochs), or reuse the subset the index already has
        if config.method == FULL:
            positions, weights = None, None
            subset_size = len(train)
        else:
            have = read_index(index_path) if index_path.exists() else None
            if not main_rank or (have is not None and
                                 epoch in set(have.column("epoch").to_pylist())):
                pass  # the index already has this epoch (or rank 0 writes it)
            else:
                if epoch % config.reselect_every != 0 and have is None:
                    log.warning("epoch %d is not a selection epoch but the index has no subset "
                                "for it: selecting now", epoch)
                needs_scores = bool(METHODS[config.method].columns)
                if needs_scores:
                    t0 = time.perf_counter()
                    score_round(epoch)
                    t["scoring_s"] = time.perf_counter() - t0
                    sources = sorted(str(p) for p in (out / "scores").glob("epoch_*.parquet")
                                     if int(p.stem.split("_")[1]) <= epoch)
                else:
                    sources = [_ids_only_table(train)]
                t0 = time.perf_counter()
                chosen = select(sources, config.method, config.fraction, epoch=epoch,
                                epochs=config.epochs, schedule=config.schedule, seed=config.seed,
                                per_class=config.per_class, min_per_class=config.min_per_class,
                                options=config.method_options)
                last = min(epoch + config.reselect_every, config.epochs)
                add_to_index(index_path, chosen, range(epoch, last), replace=True, metadata={
                    **index_meta, "sources": [s for s in sources if isinstance(s, str)]})
                t["selection_s"] = time.perf_counter() - t0
            _barrier(world)  # the other ranks read what rank 0 selected
            ids, weights = epoch_rows(read_index(index_path), epoch)
            positions = train.positions(ids)
            subset_size = len(ids)
        # 2. train one epoch on the subset
        t0 = time.perf_counter()
        plan, aug_gen = None, gen
        if world > 1:
            # the same shuffle on every rank, then rank r takes slice r of each global batch
            shuffle_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            plan = rank_plan(np.arange(len(train)) if positions is None else positions,
                             config.batch_size, rank, world, shuffle_gen)
            aug_gen = torch.Generator().manual_seed((config.seed * 1009 + epoch) * 1009 + rank)
            batches = len(plan)
        else:
            batches = -(-subset_size // config.batch_size)
        lr_sched.begin_epoch(epoch, batches)
        lr_now = lr_sched.lr
        loss = train_epoch(train_model, train, train_tf, optimizer, positions=positions,
                           weights=weights, teacher=teacher if (config.mode == "qat" and
                                                                config.kd) else None,
                           label_weight=config.label_weight, batch_size=config.batch_size,
                           generator=aug_gen, scheduler=lr_sched, device=device,
                           channels_last=config.channels_last,
                           label_smoothing=config.label_smoothing, plan=plan)
        t["train_s"] = time.perf_counter() - t0
        if not main_rank:
            _barrier(world)  # rank 0 evaluates and checkpoints
            continue
        # 3. evaluate
        t0 = time.perf_counter()
        top1 = evaluate(model, test, eval_tf, batch_size=eval_bs, device=device)
        t["eval_s"] = time.perf_counter() - t0
        for k in t:
            totals[k] += t[k]
        now = time.perf_counter()
        totals["wall_s"] += now - t_wall  # wall time of every sitting, setup included
        t_wall = now
        improved = top1 > best_top1
        best_top1 = max(best_top1, top1)
        line = {"epoch": epoch, "lr": lr_now, "train_loss": loss, "top1": top1,
                "best_top1": best_top1, "subset_size": subset_size, **{k: round(v, 3)
                                                                      for k, v in t.items()}}
        log.info("epoch %d/%d: loss %.4f, top-1 %.2f%% (best %.2f%%), %d samples, "
                 "score %.1fs select %.2fs train %.1fs eval %.1fs", epoch + 1, config.epochs,
                 loss, top1, best_top1, subset_size, t["scoring_s"], t["selection_s"],
                 t["train_s"], t["eval_s"])
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(line) + "\n")
        # 4. checkpoint (atomic): everything needed to continue exactly from here
        if improved:
            _save_atomic(model.state_dict(), out / "best.pt")
        _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                      "epoch": epoch + 1, "best_top1": best_top1, "totals": totals,
                      "calibrated_top1": calibrated_top1, "config": asdict(config)},
                     last_ckpt)
        _barrier(world)
    if end_epoch < config.epochs:
        log.info("stopped after epoch %d of %d; continue with --resume", end_epoch,
                 config.epochs)
        return None
    if not main_rank:
        return None
    if top1 is None:  # resumed a finished run
        top1 = evaluate(model, test, eval_tf, batch_size=eval_bs, device=device)
    if config.score_final and not round_path(config.epochs).exists():
        t0 = time.perf_counter()
        path = score_round(config.epochs, final=True)
        totals["scoring_s"] += time.perf_counter() - t0
        log.info("scored the finished model: %s (%.1fs)", path, time.perf_counter() - t0)
    _save_atomic(model.state_dict(), out / "model.pt")
    summary = {
        "model": config.model, "mode": config.mode, "teacher_model": config.teacher_model,
        "w_bits": config.w_bits if config.mode == "qat" else 32,
        "a_bits": config.a_bits if config.mode == "qat" else 32,
        "method": config.method, "fraction": config.fraction, "epochs": config.epochs,
        "R": config.reselect_every, "seed": config.seed, "top1": top1, "best_top1": best_top1,
        "calibrated_top1": calibrated_top1,
        **{k: round(v, 2) for k, v in totals.items()},
        "wall_s": round(totals["wall_s"] + time.perf_counter() - t_wall, 2),
        "train_samples": len(train), "test_samples": len(test), "device": str(device),
        "model_sha256": sha256_of(out / "model.pt"),
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def _write_config(config: TrainConfig, out: Path) -> None:
    import yaml

    write_text(out / "config.yaml", yaml.safe_dump(asdict(config), sort_keys=False))
