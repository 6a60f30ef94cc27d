"""What a run sets up before its first epoch: the train and test splits (limited, relabelled
or with injected label noise as configured) and the models (the student, quantized and
calibrated in QAT; the teacher; the full-precision DS reference)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..common.checks import first_line
from ..common.checkpoint import load_state, sha256_of
from ..data import load_data
from ..quant import calibrate_, quantize_model
from ..tasks import task_for_model, task_of
from .config import TrainConfig

__all__ = ["load_splits", "build_models"]

# the run's logger: these lines belong to its log
log = logging.getLogger("coreset_curate.training.run")


def load_splits(config: TrainConfig, out: Path, main: bool):
    """The train and test splits, limited, with a labels table's labels or injected label
    noise as configured. Where the truth is known (injected noise, or a labels table with
    true_label), RUN_DIR/labels.parquet keeps it beside the labels trained on."""
    view = ({"stream": True, "crop_size": config.crop_size, "resize_size": config.resize_size,
             "num_workers": config.data_workers} if config.stream else {})
    train = load_data(config.data, config.train_split, **view)
    data_task, model_task = task_of(train), task_for_model(config.model)
    if data_task is not model_task:
        raise ValueError(f"model {config.model!r} is a {model_task.model_noun} but data "
                         f"{config.data!r} is a {data_task.name} dataset: "
                         f"{model_task.trains_on}, {data_task.trains_on}")
    test = load_data(config.data, config.test_split, **view)
    if config.limit_train:
        train = train.subset(np.arange(min(config.limit_train, len(train))))
    if config.labels:
        from ..data.labels import Labels, apply_labels, read_labels_table

        table = read_labels_table(config.labels)
        if config.limit_train:  # a smoke run: the table's rows among the first N
            inside = np.isin(table.sample_ids, train.sample_ids)
            table = Labels(table.sample_ids[inside], table.labels[inside],
                           None if table.true_labels is None else table.true_labels[inside],
                           {**table.metadata, "dropped": 0, "source_fingerprint": None,
                            "fingerprint": None}, table.source)
        train = apply_labels(train, table, missing="drop" if config.limit_train else None)
        if table.true_labels is not None and main:
            pos = np.searchsorted(table.sample_ids, train.sample_ids)
            Labels(train.sample_ids, train.labels.numpy(), table.true_labels[pos], {
                **table.metadata, "from": str(config.labels)}).write(
                out / "labels.parquet", overwrite=True)
    if config.limit_test:
        test = test.subset(np.arange(min(config.limit_test, len(test))))
    if config.label_noise:
        from ..labels.noise import inject_noise

        ln = config.label_noise
        noise = inject_noise(train.labels.numpy(), ln["rate"], ln.get("type", "symmetric"),
                             seed=ln.get("seed", 0), num_classes=train.num_classes,
                             flips=ln.get("flips"), class_names=train.class_names)
        if main:
            noise.write(out / "labels.parquet", train.sample_ids,
                        fingerprint=train.fingerprint, overwrite=True)
        log.info("label noise: %d of %d training labels flipped (%s, rate %s)",
                 int(noise.flipped.sum()), len(train), noise.noise_type, noise.rate)
        train = train.with_labels(noise.labels)
    return train, test


def _create(arch: str, train, kwargs: dict) -> torch.nn.Module:
    """A model of ``arch`` (of the task that registers it) for ``train``'s classes."""
    return task_for_model(arch).create_model(arch, train, kwargs)


def _fp_checkpoint(what: str, path: str, sha256: str | None, arch: str, kwargs: dict,
                   train) -> tuple[torch.nn.Module, str]:
    """A full-precision model from a weights-only checkpoint, its sha256 checked."""
    digest = sha256_of(path)
    if sha256 and digest != sha256.lower():
        raise ValueError(f"{what} {path} does not have the sha256 the recipe names ({sha256}; "
                         f"it has {digest}): a checkpoint of your own needs "
                         f"--set {what}_sha256={digest} (or null)")
    fp = _create(arch, train, kwargs)
    try:
        fp.load_state_dict(load_state(path))
    except RuntimeError as err:
        raise ValueError(f"{what} {path} does not fit model {arch!r}: "
                         f"{first_line(err)}") from err
    return fp.eval().requires_grad_(False), digest


def build_models(config: TrainConfig, train, eval_tf, device):
    """(student, teacher, DS reference, the reference checkpoint's sha256): the student
    starts from the full-precision weights of its architecture and, in QAT, is quantized
    and calibrated on batches spread over the split."""
    model = _create(config.model, train, config.model_kwargs)
    teacher = init = teacher_digest = init_digest = None
    if config.teacher:
        teacher, teacher_digest = _fp_checkpoint(
            "teacher", config.teacher, config.teacher_sha256, config.teacher_model or config.model,
            config.teacher_model_kwargs if config.teacher_model else config.model_kwargs, train)
        teacher.to(device)
    if config.init:
        init, init_digest = _fp_checkpoint("init", config.init, config.init_sha256, config.model,
                                           config.model_kwargs, train)
    # the DS reference: the full-precision weights of the student's architecture
    reference, digest = (init, init_digest) if init is not None else (teacher, teacher_digest)
    if init is not None or config.mode == "qat":
        model.load_state_dict(reference.state_dict())
    if config.mode == "qat":
        model.to(device)
        # batches spread over the split (an image folder lists class by class)
        calib = task_of(train).calibration_batches(train, config, eval_tf, device)
        quantize_model(model, config.w_bits, config.a_bits, per_channel=config.per_channel,
                       first_last=config.first_last, init=config.quant_init)
        calibrate_(model, calib, max_batches=config.calibration_batches)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    return model, teacher, reference, digest
