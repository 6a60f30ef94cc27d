"""Scores read off the training step: no extra forward pass.

With distillation, every training step already computes the student's and the teacher's
logits for the samples it trains on. ``StepScores.record(positions, logits,
teacher_logits, labels)`` turns them into the same scores a scoring round computes (EVS,
DS, loss, margin, ... through ``scores.compute_scores``) and keeps the latest value of
every sample; ``table(epoch)`` writes them as a score round on the contract. A sample not
trained on since its last score keeps that score (from the last eval-view round it was
initialised from, or an earlier step).

How these differ from an eval-view round: they are computed on the augmented training view
(random crop and flip), the student is in train mode (batch statistics, not running ones)
and part-way through its epoch, so a sample's score is as fresh as its last step, not all
measured by one model at one moment.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import torch

from .measures import SCORES, BatchOutputs, compute_scores
from ..common.tables import SCORE_SCHEMA, table_metadata, with_metadata

__all__ = ["StepScores", "STEP_SCORES"]

# what a step can compute (grand_last needs the last layer's input, not kept here)
STEP_SCORES = ("evs", "ds", "loss", "margin", "entropy", "pred", "prob_label", "max_prob",
               "ref_pred", "ref_prob_label")


class StepScores:
    """The latest training-step scores of every row of one dataset (``free_scores``).

    Args:
        sample_ids: the dataset's sample ids, in dataset order.
        labels: the dataset's labels, in the same order.
        meta: the score tables' metadata (fingerprint, class names, ...).
    """

    def __init__(self, sample_ids: np.ndarray, labels: np.ndarray, meta: dict | None = None
                 ) -> None:
        self.sample_ids = np.asarray(sample_ids, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        n = len(self.sample_ids)
        self.values = {name: np.full(n, np.nan, dtype=np.float64) for name in STEP_SCORES}
        self.seen = np.full(n, -1, dtype=np.int32)  # epoch of each row's last step, -1: none
        self.epoch = 0
        self.meta: dict = dict(meta or {})  # the score tables' metadata (fingerprint, ...)
        self.started = False  # scores taken from an eval round, or recorded from a step

    def state_dict(self) -> dict:
        """Every row's scores and last step epoch, as tensors (for checkpoints)."""
        return {"values": {k: torch.from_numpy(v.copy()) for k, v in self.values.items()},
                "seen": torch.from_numpy(self.seen.copy()), "epoch": self.epoch,
                "meta": json.dumps(self.meta, sort_keys=True, default=str),
                "started": self.started}

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()``.

        Args:
            state: what ``state_dict`` returned.
        """
        self.values = {k: v.numpy().copy() for k, v in state["values"].items()}
        self.seen = state["seen"].numpy().copy()
        self.epoch = int(state["epoch"])
        self.meta = json.loads(state["meta"])
        self.started = bool(state["started"])

    def start_from(self, table: pa.Table) -> None:
        """Take every row's scores from an eval-view round (rows in dataset order).

        Args:
            table: a score table of this dataset, rows in dataset order.

        Raises:
            ValueError: the table's rows are not this dataset's, in order.
        """
        ids = table.column("sample_id").to_numpy()
        if not np.array_equal(ids, self.sample_ids):
            raise ValueError("the round to start from does not hold this dataset's rows in "
                             "order")
        for name in STEP_SCORES:
            if name in table.column_names:
                col = table.column(name)
                self.values[name] = col.cast(pa.float64()).fill_null(np.nan).to_numpy()
        self.meta = table_metadata(table)
        self.started = True

    @torch.no_grad()
    def record(self, positions, logits: torch.Tensor, teacher_logits: torch.Tensor | None,
               labels: torch.Tensor) -> None:
        """Scores of one training batch (rows at ``positions``) from its logits.

        Args:
            positions: the batch's row positions.
            logits: the student's logits.
            teacher_logits: the teacher's logits (DS), or None.
            labels: the batch's labels.
        """
        pos = np.asarray(positions.cpu() if isinstance(positions, torch.Tensor) else positions,
                         dtype=np.int64)
        out = BatchOutputs(logits.detach().float(), labels.to(logits.device),
                           ref_logits=None if teacher_logits is None
                           else teacher_logits.detach().float())
        for name, value in compute_scores(out, list(STEP_SCORES)).items():
            if value is not None:
                self.values[name][pos] = value.double().cpu().numpy()
        self.seen[pos] = self.epoch
        self.started = True

    def table(self, epoch: int, **meta) -> pa.Table:
        """A score round on the contract, ``epoch`` its epoch, every row's latest scores.

        Args:
            epoch: the round's epoch.
            **meta: added to the table's metadata.

        Returns:
            The table; rows never trained on have null scores, ``step_epoch`` says when
            each row was last seen (-1: never).
        """
        n = len(self.sample_ids)
        arrays = {"sample_id": pa.array(self.sample_ids, pa.int64()),
                  "label": pa.array(self.labels, pa.int64()),
                  "epoch": pa.array(np.full(n, epoch, np.int32), pa.int32())}
        # rows not trained on yet have no scores: the score columns may hold nulls
        fields = [f if f.name in ("sample_id", "label", "epoch") else f.with_nullable(True)
                  for f in SCORE_SCHEMA]
        for name in STEP_SCORES:
            dtype = SCORES[name].dtype
            v = self.values[name]
            missing = np.isnan(v)
            arrays[name] = pa.array(np.where(missing, 0, v).astype(dtype.to_pandas_dtype()),
                                    dtype, mask=missing if missing.any() else None)
            if name not in SCORE_SCHEMA.names:
                fields.append(pa.field(name, dtype))  # nullable
        arrays["step_epoch"] = pa.array(self.seen, pa.int32())
        fields.append(pa.field("step_epoch", pa.int32()))
        table = pa.table({f.name: arrays[f.name] for f in fields}, schema=pa.schema(fields))
        return with_metadata(table, {**self.meta, "epoch": epoch, "view": "train-step",
                                     "rows_from_steps": int((self.seen >= 0).sum()), **meta})
