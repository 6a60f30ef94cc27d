"""The stages of ``curate`` and their bookkeeping: ``curate.json`` keeps each finished
stage's input key (its settings and the sha256 of the files it reads) and record."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..common.atomic import write_text
from .config import CurateConfig

log = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    from ..training import sha256_of

    return sha256_of(path)


def _key(stage: str, settings: Any, inputs: list[Path]) -> str:
    blob = json.dumps({"stage": stage, "settings": settings,
                       "inputs": {str(p.name): _sha256(p) for p in inputs}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class _Book:
    """``curate.json``: each finished stage's input key and record."""

    def __init__(self, out: Path, overwrite: bool) -> None:
        self.path = out / "curate.json"
        self.out, self.overwrite = out, overwrite
        self.stages: dict = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.redo = False  # an earlier stage was made again: every later one is too

    def done(self, stage: str, key: str, outputs: list[Path]) -> dict | None:
        """The stage's record when it is finished with these inputs; None to run it."""
        entry = self.stages.get(stage)
        if entry is None or self.redo:
            return None
        if entry["key"] != key:
            if not self.overwrite:
                raise ValueError(f"{self.out / stage} was made from another recipe or other "
                                 "inputs; pass --overwrite (overwrite=True) to make it and the "
                                 "later stages again, or use another --out")
            return None
        if not all(p.exists() for p in outputs):
            return None
        log.info("%s: done before (same inputs), skipped", stage)
        return entry["record"]

    def record(self, stage: str, key: str, record: dict) -> dict:
        """Note ``stage`` as made from ``key``; returns the record as a later call reads it."""
        record = json.loads(json.dumps(record, sort_keys=True, default=str))
        self.stages[stage] = {"key": key, "record": record}
        write_text(self.path, json.dumps(self.stages, indent=2, sort_keys=True, default=str))
        return record

    def start(self, stage: str, folders: list[Path]) -> None:
        """About to make ``stage``: what an earlier make of it left goes (its inputs
        changed, or an earlier stage was made again), unless it is a killed run of this
        stage with these inputs to resume (no record yet, nothing before it remade)."""
        if stage in self.stages or self.redo:
            self.redo = True
            self.stages.pop(stage, None)
            for f in folders:
                shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink(missing_ok=True)


def _train_config(cfg: CurateConfig, which: str, extra: dict):
    from ..training.config import TrainConfig
    from ..training.recipe import recipe_values

    values = recipe_values(cfg.recipe_path(which), [])
    values.update(cfg.common)
    values.update(cfg.teacher_set if which == "teacher" else cfg.student_set)
    values.update(extra)
    return TrainConfig.from_dict(values)


def _train(config, out: Path) -> dict:
    from ..training import run_training

    resume = (out / "last.pt").exists()
    summary = run_training(config, out, resume=resume, overwrite=not resume)
    return {k: summary.get(k) for k in ("top1", "best_top1", "epochs", "method", "fraction",
                                        "train_samples", "wall_s", "scoring_s",
                                        "cores_oversubscribed", "model_sha256")}


def _labels_of(run: Path) -> Path | None:
    """The labels table a run wrote (the labels trained on, with the true ones)."""
    path = run / "labels.parquet"
    return path if path.exists() else None


def _audit_stage(teacher_cfg, student_cfg, teacher_dir: Path, out: Path) -> dict:
    """Score the teacher and the calibrated student on the training split as the teacher
    saw it, and audit both rounds."""
    from ..data import default_transforms, iter_batches, spread_positions
    from ..tasks.classification.models import create_model
    from ..labels.audit import audit
    from ..quant import calibrate_, quantize_model
    from ..scoring.scores import score_table
    from ..common.tables import write_table
    from ..training import load_checkpoint
    from ..training.setup import load_splits

    t0 = time.perf_counter()
    train, _ = load_splits(teacher_cfg, teacher_dir, main=False)
    _, eval_tf = default_transforms(train, mean=teacher_cfg.mean, std=teacher_cfg.std)
    shape = {"num_classes": train.num_classes, "in_channels": train.image_shape[0]}
    fp = create_model(teacher_cfg.model, **shape, **teacher_cfg.model_kwargs)
    load_checkpoint(fp, teacher_dir / "model.pt")
    student = create_model(student_cfg.model, **shape, **student_cfg.model_kwargs)
    student.load_state_dict(fp.state_dict())
    quantize_model(student, student_cfg.w_bits, student_cfg.a_bits,
                   per_channel=student_cfg.per_channel, first_last=student_cfg.first_last,
                   init=student_cfg.quant_init)
    rows = spread_positions(len(train), 256 * student_cfg.calibration_batches)
    calibrate_(student, (eval_tf(x) for _, x, _ in iter_batches(train, 256, rows)),
               max_batches=student_cfg.calibration_batches)
    rounds = []
    for epoch, (model, ref) in enumerate(((fp, None), (student, fp))):
        table = score_table(model, train, ref, transform=eval_tf, epoch=epoch, probs=True,
                              batch_size=256, device=teacher_cfg.device)
        rounds.append(write_table(table, out / "rounds" / f"epoch_{epoch:04d}.parquet",
                                  overwrite=True))
    truth = _labels_of(teacher_dir)
    result = audit([str(p) for p in rounds], data=train, true_labels=_truth_or_none(truth))
    result.write(out, data=train, overwrite=True)
    return {"flagged": result.num_flagged, "kinds": result.kind_counts(),
            "estimated_noise_rate": float(np.average(result.noise_rates,
                                                     weights=result.class_counts)),
            "metrics": result.metrics, "samples": int(result.table.num_rows),
            "wall_s": round(time.perf_counter() - t0, 1)}


def _truth_or_none(labels: Path | None):
    """A labels table to score flags against, when it holds the true labels."""
    if labels is None:
        return None
    from ..labels.cleaning import read_labels_table

    return labels if read_labels_table(labels).true_labels is not None else None


def _clean_stage(cfg: CurateConfig, audit_dir: Path, teacher_dir: Path, out: Path) -> dict:
    from ..labels.cleaning import clean_labels

    cleaned = clean_labels(audit_dir, relabel=cfg.clean == "relabel", kinds=tuple(cfg.kinds),
                           labels=_labels_of(teacher_dir))
    cleaned.write(out, overwrite=True)
    meta = cleaned.metadata
    record = {"kept": len(cleaned), "flagged": meta["flagged"], "relabeled": meta["relabeled"],
              "left_out": meta["dropped"]}
    if cleaned.true_labels is not None:
        record["wrong_labels_after"] = float(np.mean(cleaned.labels != cleaned.true_labels))
    return record


def _noisy_share(run: Path) -> float | None:
    """The share of wrong labels in the samples a run trained on (every subset of its index,
    or the whole training split), where its labels table knows the truth."""
    from ..common.index import read_index
    from ..labels.cleaning import read_labels_table

    truth = _labels_of(run)
    if truth is None:
        return None
    table = read_labels_table(truth)
    if table.true_labels is None:
        return None
    wrong = table.labels != table.true_labels
    if not (run / "index.parquet").exists():
        return float(wrong.mean())
    ids = read_index(run / "index.parquet").column("sample_id").to_numpy()
    pos = np.searchsorted(table.sample_ids, ids)
    return float(wrong[pos].mean())


def _wrong_share(labels: Path | None) -> float | None:
    if labels is None:
        return None
    from ..labels.cleaning import read_labels_table

    table = read_labels_table(labels)
    return None if table.true_labels is None else float(np.mean(table.labels
                                                               != table.true_labels))
