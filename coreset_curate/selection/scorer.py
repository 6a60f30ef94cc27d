"""``RoundScorer``: the scoring rounds of one dataset, every sample scored by the student of
the moment through its task (``Task.score``), against a reference whose outputs are
computed once. The selector owns one; the trainer uses one alone to score a finished
full-data run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from ..common.checks import non_negative_int
from ..common.tables import with_metadata, write_table
from ..scoring.extract import state_sha256
from ..scoring.refcache import ReferenceOutputs, cached_reference, compute_reference
from ..tasks import task_of

__all__ = ["RoundScorer"]


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class RoundScorer:
    """Scoring rounds of one dataset: every sample scored by the student of the moment.

    DS is computed against the reference, whose outputs are computed once and, with
    ``out``, cached in ``out/reference-cache``. Rounds are written to
    ``out/scores/epoch_T.parquet`` or kept in memory. The selector owns one; the trainer
    uses one alone to score a finished full-data run.

    Args:
        rows: the dataset as rows (``data.adapter.as_rows``).
        transform: the transform scoring applies (``scoring_transform``).
        reference: the full-precision model or its outputs, or None.
        out: the run folder, or None to keep rounds in memory.
        batch_size: of the scoring passes (default: the task's, 256 samples or 16 images).
        device: where scoring runs (default: the model's device).
        probs: keep the whole softmax (default: up to 256 classes).
        reference_key: the reference checkpoint's sha256 (names its cached outputs).
        metadata: added to every score table's metadata.
    """

    def __init__(self, rows, transform, *, reference=None, out: Path | None = None,
                 batch_size: int | None = None, device=None, probs: bool | None = None,
                 reference_key: str | None = None, metadata: dict | None = None) -> None:
        self.rows, self.transform, self.out = rows, transform, out
        self.reference, self.reference_key = reference, reference_key
        self.task = task_of(rows)
        self.batch_size = batch_size or self.task.scorer_batch_size
        self.device = device
        self.probs = rows.num_classes <= 256 if probs is None else bool(probs)
        self.metadata = dict(metadata or {})
        self._ref_outputs = reference if isinstance(reference, ReferenceOutputs) else None
        self.rounds: dict[int, str | pa.Table] = {}  # epoch -> path (out) or table
        self.cache: dict = {}  # what the task keeps between rounds (a reference's outputs)
        self.last_table: pa.Table | None = None

    def keep(self, table: pa.Table, epoch: int) -> str | pa.Table:
        """Keep ``table`` (made elsewhere, e.g. from training steps) as the round of ``epoch``.

        Args:
            table: the score table.
            epoch: its epoch.

        Returns:
            The path written (with ``out``) or the table (in memory).
        """
        if self.out is None:
            self.rounds[epoch] = table
        else:
            write_table(table, self.round_path(epoch), overwrite=True)
            self.rounds[epoch] = str(self.round_path(epoch))
        return self.rounds[epoch]

    def round_path(self, epoch: int) -> Path:
        """Where the round of ``epoch`` is written: ``out/scores/epoch_TTTT.parquet``."""
        return self.out / "scores" / f"epoch_{epoch:04d}.parquet"

    def reference_outputs(self, device):
        """The reference's outputs on every sample, computed once (cached in
        ``out/reference-cache`` with ``out``); None without a reference."""
        if self.reference is None or self._ref_outputs is not None:
            return self._ref_outputs
        if self.out is None:
            self._ref_outputs = compute_reference(self.reference, self.rows, self.transform,
                                                  batch_size=self.batch_size, device=device)
        else:
            key = self.reference_key or state_sha256(self.reference)
            self._ref_outputs, _ = cached_reference(
                self.reference, self.rows, self.transform, cache_dir=self.out / "reference-cache",
                checkpoint_sha256=key, batch_size=self.batch_size, device=device)
        return self._ref_outputs

    def score(self, model: nn.Module, epoch: int, **meta) -> str | pa.Table:
        """Score every sample with ``model`` as the round of ``epoch``.

        Args:
            model: the student of the moment.
            epoch: the round's epoch.
            **meta: added to the table's metadata.

        Returns:
            The path of ``out/scores/epoch_T.parquet``, or the table when in memory.

        Raises:
            ValueError: a negative epoch, or what ``score_dataset`` raises.
        """
        non_negative_int("epoch", epoch)
        device = self.device or _model_device(model)
        table = self.task.score(self, model, epoch, device, {**self.metadata, **meta})
        self.last_table = table
        return self.keep(table, epoch)


def ids_only_table(rows) -> pa.Table:
    """A round without scores (sample_id, label, epoch 0) for a method that reads none."""
    n = len(rows)
    table = pa.table({"sample_id": pa.array(rows.sample_ids, pa.int64()),
                      "label": pa.array(rows.labels.numpy(), pa.int64()),
                      "epoch": pa.array(np.zeros(n, np.int32), pa.int32())})
    meta = task_of(rows).metadata  # what readers need (a label -1 that is a group)
    return with_metadata(table, meta) if meta else table
