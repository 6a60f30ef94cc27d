"""What an audit returns: ``AuditResult`` (the table on ``AUDIT_SCHEMA`` and what the report
shows beside it) and the ``KINDS`` of a flagged sample (``audit`` explains them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

__all__ = ["AUDIT_SCHEMA", "KINDS", "AuditResult"]

KINDS = ("mislabeled", "fragile", "ambiguous", "unknown")

AUDIT_SCHEMA = pa.schema([
    pa.field("sample_id", pa.int64(), nullable=False),
    pa.field("suspicion", pa.float32(), nullable=False),
    pa.field("flag", pa.bool_(), nullable=False),
    pa.field("kind", pa.string()),  # null for samples that are not flagged
    pa.field("given_label", pa.int64(), nullable=False),
    pa.field("suggested_label", pa.int64()),  # null when no model suggests another class
    pa.field("prob_label_mean", pa.float32(), nullable=False),
    pa.field("prob_label_std", pa.float32(), nullable=False),
    pa.field("aum", pa.float32(), nullable=False),
    pa.field("evs", pa.float32(), nullable=False),
    pa.field("ds", pa.float32()),
    pa.field("ref_pred", pa.int64()),
    pa.field("ref_prob_label", pa.float32()),
    pa.field("true_label", pa.int64()),  # only when true labels were given
])


@dataclass
class AuditResult:
    """The audit table and what the report shows beside it (what ``audit`` returns).

    Attributes:
        table: one row per sample on ``AUDIT_SCHEMA`` (suspicion, flag, kind, suggested
            label, the per-round statistics), with the audit's settings in its metadata.
        class_names: the class names, indexed by label.
        epochs: the epochs of the scoring rounds read.
        thresholds: per class, the mean self-confidence of its samples (latest round).
        ref_thresholds: the same for the full-precision reference, or None.
        class_counts: samples per given label.
        noise_rates: per class, the estimated share of wrong labels.
        confident_joint: classes x classes, calibrated to the class counts.
        suspicion: the suspicion used (``"auto"`` resolved).
        metrics: precision, recall, F1 and AUROC when true labels were given, else None.
        subset_share: per index epoch, the flagged share of the subset (with ``index``).
        sources: the score tables read.
        fingerprint: the dataset fingerprint of the score tables.
    """

    table: pa.Table
    class_names: list[str]
    epochs: list[int]
    thresholds: np.ndarray  # per class, student self-confidence (last round)
    ref_thresholds: np.ndarray | None
    class_counts: np.ndarray
    noise_rates: np.ndarray  # per class, estimated share of wrong labels
    confident_joint: np.ndarray  # classes x classes, calibrated to the class counts
    suspicion: str
    metrics: dict | None = None  # precision/recall/F1/AUROC when true labels are known
    subset_share: list[dict] | None = None  # per index epoch: flagged share of the subset
    sources: list[str] = field(default_factory=list)
    fingerprint: dict | None = None

    @property
    def num_flagged(self) -> int:
        """The number of flagged samples."""
        return int(np.asarray(self.table.column("flag")).sum())

    def kind_counts(self) -> dict[str, int]:
        """Flagged samples of each kind (``KINDS``).

        Returns:
            ``{kind: count}`` for every kind, zeros included.
        """
        kinds = self.table.column("kind").to_pylist()
        return {k: sum(1 for v in kinds if v == k) for k in KINDS}

    def to_pandas(self):
        """The audit table as a pandas DataFrame."""
        return self.table.to_pandas()

    def write(self, out_dir: str | os.PathLike, *, data=None, overwrite: bool = False,
              max_examples: int = 48) -> dict[str, Path]:
        """Write ``audit.parquet``, ``report.html`` and ``summary.md`` (``write_report``).

        Args:
            out_dir: the report folder.
            data: the ``ImageData`` the scores came from, for thumbnails.
            overwrite: replace an existing report.
            max_examples: how many flagged samples the HTML page shows.

        Returns:
            The paths written, as ``write_report`` returns them.

        Raises:
            FileExistsError: a report file exists and ``overwrite`` is False.
            NotADirectoryError: ``out_dir`` is a file.
        """
        from .report import write_report

        return write_report(self, out_dir, data=data, overwrite=overwrite,
                            max_examples=max_examples)
