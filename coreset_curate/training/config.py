"""Run settings: ``TrainConfig``, every key of a recipe with its checks (``recipe`` reads
YAML recipes and overrides into one)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from ..common.checks import (boolean, fraction as check_fraction,
                             non_negative_int, non_negative_number, positive_int)
from ..selection import METHODS, SCHEDULES
from ..tasks import task_for_model

__all__ = ["TrainConfig", "FULL", "RESUMABLE_CHANGES"]

FULL = "full"
# score tables keep the whole softmax up to this many classes (CIFAR-100: 400 bytes a

# settings that may differ when a run is resumed: how it runs, not what it trains
# (score_final only adds a scoring round of the finished model)
RESUMABLE_CHANGES = {"device", "num_threads", "eval_batch_size", "score_batch_size", "compile",
                     "score_final"}


@dataclass
class TrainConfig:
    """Every setting of a run; recipes are YAML files of these keys.

    Attributes:
        data: ``digits``, ``torchvision:NAME``, ``hf:NAME``, ``imagefolder:PATH``,
            ``coco:ROOT`` or a folder in the toolkit's layout.
        train_split: the split trained on.
        test_split: the split evaluated.
        model: a registered model of a task (``list_models`` for classifiers;
            ``tasks.task_for_model`` finds its task, which must be the task of the data).
        model_kwargs: passed to the model's constructor.
        mode: ``"fp"`` (full-precision training) or ``"qat"``.
        w_bits: weight bits in QAT (2..8, 32 for float).
        a_bits: activation bits in QAT (2..8, 32 for float).
        per_channel: one weight step per output channel.
        first_last: ``"int8"``, ``"float"`` or ``"same"`` (``QuantConfig``).
        quant_init: step-size initialisation, ``"mse"`` or ``"lsq"``.
        calibration_batches: batches that initialise the activation steps.
        teacher: full-precision checkpoint to distil from; without ``init`` also the QAT
            starting point and the DS reference.
        teacher_sha256: the teacher's expected sha256 (checked).
        teacher_model: the teacher's architecture (default: ``model``).
        teacher_model_kwargs: its constructor's arguments.
        init: full-precision checkpoint of the student's architecture: where training
            starts and the DS reference.
        init_sha256: its expected sha256 (checked).
        kd: distil from the teacher in QAT (soft cross-entropy, T = 1).
        label_weight: weight of the label cross-entropy added to distillation.
        epochs: the epoch count.
        eval_epochs: epochs (counted from 1) after which the test split is evaluated
            (None: every epoch; the last always is).
        batch_size: training batch size.
        optimizer: ``"sgd"`` or ``"adam"``.
        lr: learning rate.
        step_lr: learning rate of the LSQ step sizes (default: ``lr``).
        step_lr_8bit: learning rate of the 8-bit quantizers' steps (default: ``step_lr``).
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        weight_decay: weight decay.
        lr_schedule: ``"cosine"`` or ``"constant"``, over the run's real steps.
        warmup_epochs: linear warm-up, in epochs.
        label_smoothing: label smoothing of the label cross-entropy.
        method: ``"full"`` or a registered selection method.
        fraction: share of the training split in every epoch's subset.
        reselect_every: epochs between selection rounds (R).
        schedule: the ACS schedule.
        per_class: keep the fraction of every class.
        min_per_class: the smallest per-class budget.
        method_options: the method's options.
        seed: the seed of weights, data order and selection.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        channels_last: channels-last memory format.
        compile: ``torch.compile`` the model.
        deterministic: deterministic kernels only (slower).
        num_threads: CPU threads (default: torch's).
        eval_batch_size: evaluation batch size (default 256 on CPU, 1,024 on CUDA).
        score_batch_size: scoring batch size (same default).
        limit_train: only the first N training rows (smoke runs, tests).
        limit_test: only the first N test rows.
        stream: decode images batch by batch instead of into memory (ImageNet).
        crop_size: streamed crops' size.
        resize_size: the shorter side before the eval centre crop (default
            ``crop_size / 0.875``).
        data_workers: decoding processes for streamed data.
        mean: fixed normalisation mean per channel on the [0, 1] scale (default: the
            training split's statistics).
        std: fixed normalisation standard deviation per channel.
        label_noise: injected noise for experiments, e.g. ``{type: symmetric, rate: 0.2,
            seed: 0}``; ``RUN/labels.parquet`` keeps the true labels.
        score_final: score the finished model as one more round,
            ``scores/epoch_{epochs}.parquet``.
        free_scores: selection rounds after the first from the training steps' logits
            (no scoring pass; one process).
        labels: a labels table whose labels replace the training split's.
        exclude: samples no subset may hold: an audit folder or a table with sample_id.
        audit_every: audit the scoring rounds at every N-th selection round and keep what
            it flags out of the subsets from then on.

    Raises:
        ValueError: a key has a wrong type or value, or keys contradict each other (for
            example QAT without a teacher or init, ``labels`` with ``label_noise``, or
            ``exclude`` with method ``full``).
    """

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
    # epochs (counted from 1) after which the test split is evaluated; null: after every
    # epoch. The last epoch is always evaluated, and the best checkpoint is the best of
    # the evaluated epochs (a 60-epoch run on 10% subsets spends more on evaluating
    # 10,000 test images each epoch than on training)
    eval_epochs: list | None = None
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
    # selection rounds after the first from the training steps' own student and teacher
    # logits (no scoring pass; see stepscores.py), one process only
    free_scores: bool = False
    # a labels table (sample_id, label[, true_label]; from `noise` or `clean`) whose labels
    # replace the training split's; the rows it leaves out on purpose are not trained on
    labels: str | None = None
    # samples no subset may hold: an audit folder (its flagged mislabeled samples) or a
    # table with sample_id; and/or audit the run's scoring rounds at every N-th selection
    # round, keeping what the audit flags out of the subsets from then on
    exclude: str | None = None
    audit_every: int | None = None

    def __post_init__(self) -> None:
        self._check_values()
        self._check_roles()

    def _check_values(self) -> None:
        """Each key on its own: types, ranges and names."""
        for name in ("epochs", "batch_size", "reselect_every", "calibration_batches"):
            positive_int(name, getattr(self, name))
        for name in ("limit_train", "limit_test", "num_threads", "eval_batch_size",
                     "score_batch_size", "crop_size", "resize_size", "audit_every"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        if self.data_workers is not None:
            non_negative_int("data_workers", self.data_workers)
        for name in ("per_channel", "kd", "nesterov", "per_class", "channels_last", "compile",
                     "deterministic", "score_final", "stream", "free_scores"):
            boolean(name, getattr(self, name))
        for name, accepted in (("mode", ("fp", "qat")), ("optimizer", ("sgd", "adam")),
                               ("lr_schedule", ("cosine", "constant"))):
            if getattr(self, name) not in accepted:
                raise ValueError(f"{name} must be {' or '.join(map(repr, accepted))}; got "
                                 f"{getattr(self, name)!r}")
        if self.method != FULL and self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; use 'full' or one of "
                             f"{sorted(METHODS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; registered: {sorted(SCHEDULES)}")
        check_fraction("fraction", self.fraction)
        if self.eval_epochs is not None:
            if not isinstance(self.eval_epochs, (list, tuple)) or not all(
                    isinstance(e, int) and not isinstance(e, bool) and 1 <= e <= self.epochs
                    for e in self.eval_epochs):
                raise ValueError(f"eval_epochs must be a list of epochs between 1 and epochs "
                                 f"({self.epochs}), counted from 1; got {self.eval_epochs!r}")
        for name in ("lr", "weight_decay", "momentum", "warmup_epochs", "label_weight",
                     "label_smoothing") + tuple(k for k in ("step_lr", "step_lr_8bit")
                                                if getattr(self, k) is not None):
            non_negative_number(name, getattr(self, name))

    def _check_roles(self) -> None:
        """Keys that depend on each other: checkpoints, views, noise."""
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
        if self.labels is not None and self.label_noise is not None:
            raise ValueError("labels (a labels table) and label_noise both set the training "
                             "labels: use one (write noisy labels with `coreset-curate noise`)")
        if self.method == FULL and (self.exclude or self.audit_every):
            raise ValueError("exclude and audit_every keep samples out of the subsets of a "
                             "selection method; with method full, train on a cleaned labels "
                             "table instead (labels=, from `coreset-curate clean`)")
        if self.audit_every and self.free_scores:
            raise ValueError("audit_every audits eval-view scoring rounds; free_scores makes "
                             "its rounds from training steps: use one or the other")
        task_for_model(self.model).check_config(self)  # what the model's task does not take
        if self.label_noise is not None:
            from ..labels.noise import NOISE_TYPES

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
            if {"teacher", "student"} <= set(values) and "model" not in values:
                raise ValueError("this is a curate recipe (it names a teacher and a student "
                                 "recipe): run it with `coreset-curate curate --recipe R "
                                 "--out DIR`")
            raise ValueError(f"unknown recipe key(s) {unknown}; accepted keys: {sorted(known)}")
        return cls(**values)
