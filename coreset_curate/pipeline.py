"""From a noisy dataset to a clean quantized model, in one resumable pipeline.

    cfg = load_curate_recipe("recipes/cifar10_resnet20_w4a4_curate.yaml")
    summary = curate(cfg, "curated/")          # or: coreset-curate curate --recipe R --out DIR

Stages, each in its own part of the output folder:

1. ``teacher/``: the full-precision teacher, trained on the labels as given (``teacher``
   recipe; a teacher that memorised its labels cannot audit them, so keep it short);
2. ``audit/``: two scoring rounds of the training split, the teacher's own and the
   calibrated quantized student's (DS against the teacher), both with the whole softmax,
   and the noise audit of them (``audit.parquet``, ``report.html``, ``summary.md``);
3. ``labels_clean.parquet``: the labels with the audit's flagged samples left out
   (``clean: exclude``) or given the suggested label (``clean: relabel``);
4. ``teacher_clean/``: the teacher trained again, the same way, on the cleaned labels
   (``retrain_teacher: false`` skips it and distils from the first one);
5. ``student/``: QAT (``student`` recipe: its method, fraction and R) on the cleaned labels,
   distilling from the cleaned teacher, the finished model scored once more;
6. ``final_audit/``: the audit of that last round: what noise is left.

``summary.json`` and ``report.html`` compare before and after: flags, labels left out or
changed, the share of wrong labels where the truth is known (injected noise, or a labels
table with ``true_label``), and top-1 of both teachers and the student.

A stage whose outputs exist and whose inputs (its settings and the files it reads, by
sha256) are those it was made from is skipped; one made from other inputs is refused,
with ``overwrite`` to make it and every later stage again. A killed training stage resumes
from its last checkpoint, and a killed pipeline started again ends where an uninterrupted
one would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common.atomic import write_text

__all__ = ["STAGES", "CurateConfig", "load_curate_recipe", "curate"]

log = logging.getLogger(__name__)

STAGES = ("teacher", "audit", "clean", "teacher_clean", "student", "final_audit")
CLEAN_MODES = ("exclude", "relabel")
# keys that set the training labels: the pipeline replaces them with its cleaned table
_LABEL_KEYS = ("labels", "label_noise")


@dataclass
class CurateConfig:
    """The settings of one ``curate`` run; a curate recipe is a YAML file of these keys.

    Attributes:
        teacher: the full-precision teacher's recipe (a ``train`` recipe, ``mode: fp``).
        student: the quantized student's recipe (``mode: qat``); its ``teacher``, labels
            and ``score_final`` are set by the pipeline.
        common: recipe keys set in both (``data``, ``labels`` or ``label_noise``: the
            training labels, ``limit_train``, ``seed``, ...).
        teacher_set: recipe keys set in the teachers only (``epochs``, ...).
        student_set: recipe keys set in the student only (``method``, ``fraction``, ...).
        clean: ``"exclude"`` (flagged samples left out) or ``"relabel"`` (given the
            audit's suggested label; left out where it suggests none).
        kinds: the flag kinds cleaning acts on (default those of ``clean``: mislabeled,
            unknown).
        retrain_teacher: train the teacher again on the cleaned labels.
        final_audit: audit the student's finished model.
        folder: the folder relative paths in the recipe are read against (set by
            ``load_curate_recipe``; default the working directory).

    Raises:
        ValueError: an unknown ``clean`` mode or flag kind, or a setting of the wrong
            kind.
    """

    teacher: str
    student: str
    common: dict = field(default_factory=dict)
    teacher_set: dict = field(default_factory=dict)
    student_set: dict = field(default_factory=dict)
    clean: str = "exclude"
    kinds: list = field(default_factory=lambda: list(_clean_kinds()))
    retrain_teacher: bool = True
    final_audit: bool = True
    folder: str = "."

    def __post_init__(self) -> None:
        from .labels.audit import KINDS

        for name in ("teacher", "student"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be the path of a train recipe; got "
                                 f"{getattr(self, name)!r}")
        for name in ("common", "teacher_set", "student_set"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a mapping of recipe keys; got "
                                 f"{getattr(self, name)!r}")
        if self.clean not in CLEAN_MODES:
            raise ValueError(f"clean must be one of {CLEAN_MODES}; got {self.clean!r}")
        kinds = list(self.kinds) if isinstance(self.kinds, (list, tuple)) else None
        if not kinds or any(k not in KINDS for k in kinds):
            raise ValueError(f"kinds must be a non-empty list of {KINDS}; got {self.kinds!r}")
        for name in ("retrain_teacher", "final_audit"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false; got {getattr(self, name)!r}")
        both = [k for k in _LABEL_KEYS if k in self.common]
        if len(both) > 1:
            raise ValueError("common sets both labels and label_noise: use one")
        for name in ("teacher_set", "student_set"):
            clash = [k for k in _LABEL_KEYS if k in getattr(self, name)]
            if clash:
                raise ValueError(f"{name} sets {clash}: the training labels go in common "
                                 "(the pipeline trains the teacher again on its cleaned ones)")

    def recipe_path(self, which: str) -> Path:
        """The teacher's or the student's recipe file, resolved against ``folder``."""
        path = Path(os.path.expanduser(getattr(self, which)))
        return path if path.is_absolute() else Path(self.folder) / path


def load_curate_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> CurateConfig:
    """A ``CurateConfig`` from a YAML curate recipe and ``key=value`` overrides.

    Relative paths in the recipe (its ``teacher`` and ``student`` recipes, and path keys in
    ``common``) are relative to the recipe's folder.

    Args:
        path: the curate recipe.
        overrides: ``["key=value", ...]``, each value read as YAML (for example
            ``'common={data: digits, limit_train: 500}'``).

    Returns:
        The config.

    Raises:
        FileNotFoundError: the recipe does not exist.
        ValueError: it is not valid YAML, not a mapping, has unknown keys or bad values.
    """
    from .training.config import parse_assignments, resolve_path, yaml_mapping

    path = Path(path)
    values = yaml_mapping(path, "curate recipe")
    folder = path.parent.resolve()
    for key in ("common", "teacher_set", "student_set"):
        if isinstance(values.get(key), dict):
            values[key] = {k: resolve_path(k, v, folder) for k, v in values[key].items()}
    values.update(parse_assignments(overrides, "--set"))
    known = {f.name for f in dataclasses.fields(CurateConfig)} - {"folder"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown curate key(s) {unknown}; accepted keys: {sorted(known)}")
    missing = [k for k in ("teacher", "student") if k not in values]
    if missing:
        raise ValueError(f"curate recipe {path} lacks {missing}: the train recipes of the "
                         "teacher and the student")
    return CurateConfig(**values, folder=str(folder))


def _clean_kinds() -> tuple:
    from .labels.cleaning import CLEAN_KINDS

    return CLEAN_KINDS


# ------------------------------------------------------------------ stage bookkeeping
def _sha256(path: Path) -> str:
    from .training import sha256_of

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


# ------------------------------------------------------------------ the stages
def _train_config(cfg: CurateConfig, which: str, extra: dict):
    from .training.config import TrainConfig, _recipe_values

    values = _recipe_values(cfg.recipe_path(which), [])
    values.update(cfg.common)
    values.update(cfg.teacher_set if which == "teacher" else cfg.student_set)
    values.update(extra)
    return TrainConfig.from_dict(values)


def _train(config, out: Path) -> dict:
    from .training import run_training

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
    from .data import default_transforms, iter_batches, spread_positions
    from .tasks.classification.models import create_model
    from .labels.audit import audit
    from .quant import calibrate_, quantize_model
    from .scoring.scores import score_dataset
    from .common.tables import write_table
    from .training import load_checkpoint
    from .training.run import _splits

    t0 = time.perf_counter()
    train, _ = _splits(teacher_cfg, teacher_dir, main=False)
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
        table = score_dataset(model, train, ref, transform=eval_tf, epoch=epoch, probs=True,
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
    from .labels.cleaning import read_labels_table

    return labels if read_labels_table(labels).true_labels is not None else None


def _clean_stage(cfg: CurateConfig, audit_dir: Path, teacher_dir: Path, out: Path) -> dict:
    from .labels.cleaning import clean_labels

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
    from .common.index import read_index
    from .labels.cleaning import read_labels_table

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
    from .labels.cleaning import read_labels_table

    table = read_labels_table(labels)
    return None if table.true_labels is None else float(np.mean(table.labels
                                                               != table.true_labels))


def curate(config: CurateConfig, out_dir: str | os.PathLike, *,
           overwrite: bool = False) -> dict:
    """Run (or resume) the pipeline ``config`` describes into ``out_dir`` (module doc).

    Args:
        config: the settings (``load_curate_recipe``).
        out_dir: the output folder.
        overwrite: make again a stage whose inputs changed, and every stage after it.

    Returns:
        The summary (also ``out_dir/summary.json``; ``out_dir/report.html`` shows it).

    Raises:
        ValueError: a stage in ``out_dir`` was made from other inputs (without
            ``overwrite``), a recipe is bad, or the audit finds nothing to act on in a
            way the rest cannot use (no sample left).
        FileNotFoundError: a recipe or the data is not there.
    """
    out = Path(out_dir)
    t0 = time.perf_counter()
    records: dict[str, dict] = {}

    # 1. the teacher on the labels as given
    teacher_cfg = _train_config(config, "teacher", {})
    teacher_dir = out / "teacher"
    # the student's settings as its recipe gives them (its teacher is the pipeline's)
    student_plain = _train_config(config, "student", {
        "teacher": str(teacher_dir / "model.pt"), "teacher_sha256": None, "init": None,
        "init_sha256": None, "teacher_model": None})
    if teacher_cfg.mode != "fp" or student_plain.mode != "qat":
        raise ValueError(f"the teacher recipe must train in full precision (mode: fp) and the "
                         f"student's quantized (mode: qat); they have {teacher_cfg.mode!r} and "
                         f"{student_plain.mode!r}")
    if teacher_cfg.model != student_plain.model:
        raise ValueError(f"the student starts from the teacher's weights: both recipes must "
                         f"name one model; the teacher's is {teacher_cfg.model!r}, the "
                         f"student's {student_plain.model!r}")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; give a folder for the pipeline")
    out.mkdir(parents=True, exist_ok=True)
    book = _Book(out, overwrite)
    key = _key("teacher", asdict(teacher_cfg), [])
    records["teacher"] = book.done("teacher", key, [teacher_dir / "model.pt"]) or None
    if records["teacher"] is None:
        book.start("teacher", [teacher_dir])
        records["teacher"] = book.record("teacher", key, _train(teacher_cfg, teacher_dir))

    # 2. the audit with the teacher and the calibrated student
    audit_dir = out / "audit"
    quant = {k: getattr(student_plain, k) for k in ("model", "w_bits", "a_bits", "per_channel",
                                                    "first_last", "quant_init",
                                                    "calibration_batches")}
    key = _key("audit", quant, [teacher_dir / "model.pt"])
    records["audit"] = book.done("audit", key, [audit_dir / "audit.parquet"])
    if records["audit"] is None:
        book.start("audit", [audit_dir])
        records["audit"] = book.record("audit", key, _audit_stage(
            teacher_cfg, student_plain, teacher_dir, audit_dir))
    rate = records["audit"]["estimated_noise_rate"]
    if rate == 0:
        log.warning("the audit estimates no wrong labels: cleaning changes nothing, and the "
                    "pipeline trains the student on the labels as given")
    elif rate > 0.5:
        log.warning("the audit estimates %.0f%% wrong labels: above half, the teacher's view "
                    "of a class cannot be trusted, and cleaning may remove right labels",
                    100 * rate)

    # 3. the cleaned labels
    clean_path = out / "labels_clean.parquet"
    key = _key("clean", {"clean": config.clean, "kinds": list(config.kinds)},
               [audit_dir / "audit.parquet"])
    records["clean"] = book.done("clean", key, [clean_path])
    if records["clean"] is None:
        book.start("clean", [clean_path])
        records["clean"] = book.record("clean", key,
                                       _clean_stage(config, audit_dir, teacher_dir, clean_path))
    if records["clean"]["kept"] == 0:
        raise ValueError("cleaning left no sample to train on: the audit flags every one")
    cleaned_labels = {"labels": str(clean_path), "label_noise": None}

    # 4. the teacher again, on the cleaned labels
    final_teacher = teacher_dir
    if config.retrain_teacher:
        final_teacher = out / "teacher_clean"
        cfg2 = _train_config(config, "teacher", cleaned_labels)
        key = _key("teacher_clean", asdict(cfg2), [clean_path])
        records["teacher_clean"] = book.done("teacher_clean", key,
                                             [final_teacher / "model.pt"])
        if records["teacher_clean"] is None:
            book.start("teacher_clean", [final_teacher])
            records["teacher_clean"] = book.record("teacher_clean", key,
                                                   _train(cfg2, final_teacher))

    # 5. the quantized student
    student_dir = out / "student"
    teacher_file = final_teacher / "model.pt"
    student_cfg = _train_config(config, "student", {
        **cleaned_labels, "teacher": str(teacher_file.resolve()),
        "teacher_sha256": _sha256(teacher_file), "init": None, "init_sha256": None,
        "teacher_model": teacher_cfg.model, "teacher_model_kwargs": teacher_cfg.model_kwargs,
        "score_final": True})
    key = _key("student", asdict(student_cfg), [clean_path, teacher_file])
    records["student"] = book.done("student", key, [student_dir / "model.pt"])
    if records["student"] is None:
        book.start("student", [student_dir])
        rec = _train(student_cfg, student_dir)
        rec["noisy_share"] = _noisy_share(student_dir)
        records["student"] = book.record("student", key, rec)

    # 6. what noise is left
    if config.final_audit:
        from .labels.audit import audit

        final_round = student_dir / "scores" / f"epoch_{student_cfg.epochs:04d}.parquet"
        final_dir = out / "final_audit"
        key = _key("final_audit", {}, [final_round])
        records["final_audit"] = book.done("final_audit", key, [final_dir / "audit.parquet"])
        if records["final_audit"] is None:
            book.start("final_audit", [final_dir])
            result = audit([str(final_round)],
                           true_labels=_truth_or_none(_labels_of(student_dir)))
            result.write(final_dir, overwrite=True)
            records["final_audit"] = book.record("final_audit", key, {
                "flagged": result.num_flagged, "kinds": result.kind_counts(),
                "metrics": result.metrics})

    summary = {
        "stages": records,
        "estimated_noise_rate": rate,
        "wrong_labels_before": _wrong_share(_labels_of(teacher_dir)),
        "wrong_labels_after": records["clean"].get("wrong_labels_after"),
        "teacher_top1": records["teacher"]["top1"],
        "teacher_clean_top1": (records.get("teacher_clean") or {}).get("top1"),
        "student_top1": records["student"]["top1"],
        "student_noisy_share": records["student"].get("noisy_share"),
        "wall_s": round(sum((r or {}).get("wall_s") or 0.0 for r in records.values()), 1),
        "this_call_s": round(time.perf_counter() - t0, 1),
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True,
                                                default=str))
    write_text(out / "report.html", _report(summary, out))
    return summary


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def _report(summary: dict, out: Path) -> str:
    """One page: the before/after figures and a row per stage (every value escaped)."""
    e = html.escape
    pct = (lambda v: "-" if v is None else f"{100 * v:.2f}%")
    head = [("wrong labels the audit estimates", pct(summary["estimated_noise_rate"])),
            ("wrong labels in the training split, as given", pct(summary["wrong_labels_before"])),
            ("wrong labels after cleaning", pct(summary["wrong_labels_after"])),
            ("wrong labels in the student's subsets", pct(summary["student_noisy_share"])),
            ("teacher top-1 (labels as given)", _fmt(summary["teacher_top1"])),
            ("teacher top-1 (cleaned labels)", _fmt(summary["teacher_clean_top1"])),
            ("quantized student top-1", _fmt(summary["student_top1"])),
            ("wall time of all stages (s)", _fmt(summary["wall_s"]))]
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in head)
    stages = "".join(
        f"<tr><td>{e(name)}</td><td><code>{e(json.dumps(rec, sort_keys=True, default=str))}"
        f"</code></td></tr>" for name, rec in summary["stages"].items() if rec is not None)
    links = "".join(f'<li><a href="{e(p)}/report.html">{e(p)}</a></li>'
                    for p in ("audit", "final_audit") if (out / p / "report.html").exists())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>curate</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
            "td,th{padding:.3em .8em;text-align:left;vertical-align:top}"
            "code{font-size:.85em;word-break:break-all}</style></head><body>"
            f"<h1>From noisy labels to a quantized model</h1><table>{rows}</table>"
            f"<h2>Stages</h2><table>{stages}</table><h2>Audits</h2><ul>{links}</ul>"
            "</body></html>")
