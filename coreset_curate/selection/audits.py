"""The audits a selector runs as it goes (``audit_every=N``): at every N-th selection round
it audits the scoring rounds so far, writes ``out/audits/epoch_T.parquet`` and keeps what
the latest audit flags out of every subset from then on."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..common.checks import UnknownIds, positive_int
from ..common.tables import write_table
from ..labels.cleaning import exclusions

__all__ = ["RunningAudits", "known_exclusions"]

# the selector's logger: these lines belong to its log
log = logging.getLogger("coreset_curate.selection.selector")


def known_exclusions(exclude, sample_ids: np.ndarray) -> np.ndarray:
    """The ids of ``exclude`` (``labels.cleaning.exclusions``), every one in ``sample_ids``.

    Raises:
        UnknownIds: ``exclude`` names ids the dataset lacks.
    """
    ids = exclusions(exclude)
    unknown = ~np.isin(ids, sample_ids)
    if unknown.any():
        raise UnknownIds(f"exclude names {int(unknown.sum())} sample ids the dataset lacks, "
                         f"e.g. {ids[unknown][:5].tolist()}")
    return ids


class RunningAudits:
    """The excluded ids of every epoch: those given, and those the latest audit flags.

    Args:
        every: audit at every ``every``-th selection round (None: never).
        reselect_every: epochs between selection rounds.
        out: the run folder, where audits are written and read back (None: memory only).
        exclude: the ids kept out whatever the audits say.

    Raises:
        ValueError: ``every`` is not a positive integer.
    """

    def __init__(self, every: int | None, reselect_every: int, out: Path | None,
                 exclude: np.ndarray) -> None:
        self.every = None if every is None else positive_int("audit_every", every)
        self.reselect_every, self.out, self.exclude = reselect_every, out, exclude
        self.flags: dict[int, np.ndarray] = {}  # audit epoch -> flagged ids (this sitting)

    def due(self, epoch: int) -> bool:
        """Whether the selection round of ``epoch`` audits first."""
        return bool(self.every) and (epoch // self.reselect_every) % self.every == 0

    def excluded(self, epoch: int, rounds, samples: int) -> np.ndarray:
        """The ids no subset of ``epoch`` may hold; audits ``rounds`` (the scoring rounds
        so far, given only when ``due``) first. ``samples``: the dataset's size, for the
        log."""
        if not self.every:
            return self.exclude
        if rounds is not None:
            from ..labels.audit import audit

            result = audit(rounds)
            flagged = exclusions(result)
            self.flags[epoch] = flagged
            if self.out is not None:
                write_table(result.table, self.out / "audits" / f"epoch_{epoch:04d}.parquet",
                            overwrite=True)
            log.info("audit at epoch %d: %d of %d samples flagged, %d kept out of selection",
                     epoch, result.num_flagged, samples, len(flagged))
        else:
            done = dict(self.flags)
            if self.out is not None:
                for p in (self.out / "audits").glob("epoch_*.parquet"):
                    e = int(p.stem.split("_")[1])
                    if e not in done:
                        done[e] = p
            before = [e for e in done if e <= epoch]
            if not before:
                return self.exclude
            flagged = done[max(before)]
            if not isinstance(flagged, np.ndarray):
                flagged = self.flags[max(before)] = exclusions(flagged)
        return np.union1d(self.exclude, flagged)

    def state_dict(self) -> dict:
        """This sitting's audits (with ``out``, they are also on disk)."""
        return {str(e): torch.from_numpy(ids.copy()) for e, ids in self.flags.items()}

    def load_state_dict(self, state: dict) -> None:
        """Take back what ``state_dict`` returned (audits already known stay)."""
        for e, ids in state.items():
            self.flags.setdefault(int(e), ids.numpy().astype(np.int64))
