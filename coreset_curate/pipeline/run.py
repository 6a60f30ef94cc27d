"""``curate``: the stages in order, each skipped when its outputs exist and its inputs are
those it was made from (``stages``)."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

from ..common.atomic import write_text
from .config import CurateConfig
from .report import _report
from .stages import (_Book, _audit_stage, _clean_stage, _key, _labels_of, _noisy_share,
                     _sha256, _train, _train_config, _truth_or_none, _wrong_share)

__all__ = ["curate"]

log = logging.getLogger(__name__)


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
    teacher_cfg, student_plain = _configs(config, out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; give a folder for the pipeline")
    out.mkdir(parents=True, exist_ok=True)
    book = _Book(out, overwrite)
    _teacher(book, records, teacher_cfg, out / "teacher")
    rate = _audit(book, records, teacher_cfg, student_plain, out)
    clean_path = _clean(book, records, config, out)
    cleaned_labels = {"labels": str(clean_path), "label_noise": None}
    final_teacher = _teacher_clean(book, records, config, out, clean_path, cleaned_labels)
    student_cfg = _student(book, records, config, out, teacher_cfg, final_teacher, clean_path,
                           cleaned_labels)
    if config.final_audit:
        _final_audit(book, records, out, student_cfg)
    summary = {
        "stages": records,
        "estimated_noise_rate": rate,
        "wrong_labels_before": _wrong_share(_labels_of(out / "teacher")),
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


def _configs(config: CurateConfig, out: Path):
    """The teacher's settings and the student's as its recipe gives them (its teacher is
    the pipeline's), checked to fit one another."""
    teacher_cfg = _train_config(config, "teacher", {})
    student_plain = _train_config(config, "student", {
        "teacher": str(out / "teacher" / "model.pt"), "teacher_sha256": None, "init": None,
        "init_sha256": None, "teacher_model": None})
    if teacher_cfg.mode != "fp" or student_plain.mode != "qat":
        raise ValueError(f"the teacher recipe must train in full precision (mode: fp) and the "
                         f"student's quantized (mode: qat); they have {teacher_cfg.mode!r} and "
                         f"{student_plain.mode!r}")
    if teacher_cfg.model != student_plain.model:
        raise ValueError(f"the student starts from the teacher's weights: both recipes must "
                         f"name one model; the teacher's is {teacher_cfg.model!r}, the "
                         f"student's {student_plain.model!r}")
    return teacher_cfg, student_plain


def _teacher(book: _Book, records: dict, teacher_cfg, teacher_dir: Path) -> None:
    """1. the teacher on the labels as given."""
    key = _key("teacher", asdict(teacher_cfg), [])
    records["teacher"] = book.done("teacher", key, [teacher_dir / "model.pt"]) or None
    if records["teacher"] is None:
        book.start("teacher", [teacher_dir])
        records["teacher"] = book.record("teacher", key, _train(teacher_cfg, teacher_dir))


def _audit(book: _Book, records: dict, teacher_cfg, student_plain, out: Path) -> float:
    """2. the audit with the teacher and the calibrated student; returns the noise rate
    it estimates."""
    teacher_dir, audit_dir = out / "teacher", out / "audit"
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
    return rate


def _clean(book: _Book, records: dict, config: CurateConfig, out: Path) -> Path:
    """3. the cleaned labels; returns their table's path."""
    clean_path, audit_dir = out / "labels_clean.parquet", out / "audit"
    key = _key("clean", {"clean": config.clean, "kinds": list(config.kinds)},
               [audit_dir / "audit.parquet"])
    records["clean"] = book.done("clean", key, [clean_path])
    if records["clean"] is None:
        book.start("clean", [clean_path])
        records["clean"] = book.record("clean", key, _clean_stage(
            config, audit_dir, out / "teacher", clean_path))
    if records["clean"]["kept"] == 0:
        raise ValueError("cleaning left no sample to train on: the audit flags every one")
    return clean_path


def _teacher_clean(book: _Book, records: dict, config: CurateConfig, out: Path,
                   clean_path: Path, cleaned_labels: dict) -> Path:
    """4. the teacher again, on the cleaned labels; returns the folder of the teacher the
    student distils from."""
    if not config.retrain_teacher:
        return out / "teacher"
    final_teacher = out / "teacher_clean"
    cfg2 = _train_config(config, "teacher", cleaned_labels)
    key = _key("teacher_clean", asdict(cfg2), [clean_path])
    records["teacher_clean"] = book.done("teacher_clean", key, [final_teacher / "model.pt"])
    if records["teacher_clean"] is None:
        book.start("teacher_clean", [final_teacher])
        records["teacher_clean"] = book.record("teacher_clean", key,
                                               _train(cfg2, final_teacher))
    return final_teacher


def _student(book: _Book, records: dict, config: CurateConfig, out: Path, teacher_cfg,
             final_teacher: Path, clean_path: Path, cleaned_labels: dict):
    """5. the quantized student; returns its settings."""
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
    return student_cfg


def _final_audit(book: _Book, records: dict, out: Path, student_cfg) -> None:
    """6. what noise is left: the audit of the student's last scoring round."""
    from ..labels.audit import audit

    student_dir = out / "student"
    final_round = student_dir / "scores" / f"epoch_{student_cfg.epochs:04d}.parquet"
    final_dir = out / "final_audit"
    key = _key("final_audit", {}, [final_round])
    records["final_audit"] = book.done("final_audit", key, [final_dir / "audit.parquet"])
    if records["final_audit"] is None:
        book.start("final_audit", [final_dir])
        result = audit([str(final_round)], true_labels=_truth_or_none(_labels_of(student_dir)))
        result.write(final_dir, overwrite=True)
        records["final_audit"] = book.record("final_audit", key, {
            "flagged": result.num_flagged, "kinds": result.kind_counts(),
            "metrics": result.metrics})
