"""``AdaptiveSelector``: adaptive coreset selection inside any training loop.

    sel = AdaptiveSelector(train_set, method="acs", fraction=0.1, epochs=E,
                           reselect_every=R, reference=fp_model, out="run/")
    for epoch in range(E):
        sampler = sel.sampler(epoch, student)
        loader = DataLoader(train_set, batch_size=128, sampler=sampler)
        for x, y in loader: ...             # sampler.weights_of(indices): loss weights

When a selection round is due (every ``reselect_every`` epochs, or an epoch the index
lacks) ``sampler(epoch, model)`` scores every sample with ``model`` (DS against
``reference``), selects, writes ``out/scores/epoch_T.parquet`` and ``out/index.parquet``
and returns a ``Sampler`` over the subset, split across ranks under torch.distributed
(rank 0 scores and writes). ``run_training`` stands on the same ``subset`` call.
``exclude=`` keeps samples out of every subset; ``audit_every=N`` audits as it goes
(``audits.RunningAudits``); the class budgets stay those of all samples. ``state_dict()``
resumes it, and a selector over the same ``out`` picks up the index written there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from ..common.checks import choice, non_negative_int, positive_int
from ..data import as_rows
from ..common.distributed import barrier, current_world
from ..common.index import (add_to_index, epoch_rows, index_epochs, index_lock, index_table,
                    merge_index, read_index)
from ..scoring.refcache import ReferenceOutputs
from .sampler import DistributedSubsetSampler, SubsetSampler
from .audits import RunningAudits, known_exclusions
from .scorer import RoundScorer, ids_only_table
from ..scoring.scores import scoring_transform
from ..tasks import task_of
from .core import METHODS, SCHEDULES, check_request
from .entry import select
from ..scoring.stepscores import StepScores
from ..common.tables import INDEX_SCHEMA, table_metadata, with_metadata, write_table

__all__ = ["AdaptiveSelector", "RoundScorer"]

log = logging.getLogger(__name__)

# settings that decide the subsets: a resumed selector must have the same
_SETTINGS = ("method", "fraction", "seed", "R", "schedule", "epochs", "per_class", "options",
             "free_scores", "exclude", "audit_every")
# settings an index records only when they are on (an older index lacks them: off)
_WHEN_ON = ("free_scores", "exclude", "audit_every")


class AdaptiveSelector:
    """Scores, selects and serves the subset of every epoch of one run (module doc).

    Args:
        dataset: a dataset of this toolkit (``load_data``) with ``transform=`` its
            ``EvalTransform``, or any map-style torch ``Dataset`` of ``(x, y)`` or
            ``(sample_id, x, y)`` items (taken through its own transforms: give it the
            deterministic view).
        method: a registered selection method (``list_methods``).
        fraction: share of the samples in every epoch's subset.
        epochs: the run's epoch count.
        reselect_every: epochs between selection rounds (the paper's R).
        reference: the full-precision model (DS), or its outputs (``ReferenceOutputs``).
        out: the run folder (scores, index, reference cache); ``None`` keeps them in
            memory.
        schedule: the ACS schedule, as for ``select``.
        seed: as for ``select``.
        per_class: as for ``select``.
        min_per_class: as for ``select``.
        options: the method's options, as for ``select``.
        transform: the ``EvalTransform`` of a toolkit dataset; unset for a torch Dataset,
            and not needed for a method that reads no score (``random_epoch``, ...).
        batch_size: of the scoring passes (default: the task's, 256 samples or 16 images).
        device: where scoring runs (default: the model's device).
        labels: the dataset's labels when it has no ``targets`` (saves a pass over it).
        probs: keep the student's whole softmax in the score tables (what the audit's
            channel suspicion reads; default: up to 256 classes).
        reference_key: the reference checkpoint's sha256 (names its cached outputs;
            default: the sha256 of its state).
        metadata: added to every score table's metadata.
        free_scores: make selection rounds from the training steps' outputs
            (``record``) instead of scoring passes.
        exclude: samples no subset may hold (ids, an audit or its folder: its flagged
            mislabeled samples).
        audit_every: audit the scoring rounds so far at every N-th selection round and
            exclude what it flags from then on.

    Raises:
        ValueError: an unknown method, schedule or option, an argument out of range, a
            method that reads DS without ``reference``, ``free_scores`` on a task that
            does not take it (``Task.free_scores``), with several processes or with
            ``audit_every``, several processes without ``out``, or an index in ``out``
            made with other settings.
        TypeError: the transform does not fit the dataset (see ``scoring_transform``).
        UnknownIds: ``exclude`` names ids the dataset lacks.
    """

    def __init__(self, dataset, method: str = "acs", fraction: float = 0.1, *, epochs: int,
                 reselect_every: int = 1, reference: nn.Module | ReferenceOutputs | None = None,
                 out: str | os.PathLike | None = None, schedule: str = "cos", seed: int = 0,
                 per_class: bool = True, min_per_class: int = 0, options: dict | None = None,
                 transform=None, batch_size: int | None = None, device=None, labels=None,
                 probs: bool | None = None, reference_key: str | None = None,
                 metadata: dict | None = None, free_scores: bool = False, exclude=None,
                 audit_every: int | None = None) -> None:
        self.options = check_request(method, fraction, seed, min_per_class, options)
        self.method, self.fraction, self.seed = method, fraction, int(seed)
        self.epochs = positive_int("epochs", epochs)
        self.reselect_every = positive_int("reselect_every", reselect_every)
        self.schedule = choice("schedule", schedule, SCHEDULES, "schedule")
        self.per_class, self.min_per_class = bool(per_class), int(min_per_class)
        self.batch_size = None if batch_size is None else positive_int("batch_size",
                                                                       batch_size)
        self.rows = as_rows(dataset, **({} if labels is None else {"labels": labels}))
        self.spec = METHODS[method]
        # a method that reads no score (random_epoch, random_cover, ...) never scores: it
        # needs no eval transform unless rounds are scored anyway (audits, free_scores)
        scores_rounds = bool(self.spec.columns) or audit_every is not None or free_scores
        self.transform = (scoring_transform(self.rows, transform)
                          if scores_rounds or transform is not None else None)
        if "ds" in self.spec.columns and reference is None and schedule != "evs":
            raise ValueError(f"{method} reads the disagreement score: pass reference=, the "
                             "full-precision model")
        self.out = None if out is None else Path(out)
        self.scorer = RoundScorer(self.rows, self.transform, reference=reference, out=self.out,
                                  batch_size=self.batch_size, device=device, probs=probs,
                                  reference_key=reference_key, metadata=metadata)
        self.options_given = dict(options or {})
        self.steps = None if not free_scores else StepScores(
            self.rows.sample_ids, self.rows.labels.numpy(), meta={
                "fingerprint": self.rows.fingerprint, "num_classes": self.rows.num_classes,
                "class_names": self.rows.class_names, **self.scorer.metadata})
        task = task_of(self.rows)
        if free_scores and not task.free_scores:
            raise ValueError(f"free_scores records classifier logits; a {task.name} run's "
                             "rounds come from scoring passes")
        if free_scores and current_world()[1] > 1:
            raise ValueError("free_scores records this process's training steps only: "
                             "run it in one process")
        self.exclude = known_exclusions(exclude, self.rows.sample_ids)
        self.audits = RunningAudits(audit_every, self.reselect_every, self.out, self.exclude)
        self.audit_every = self.audits.every
        if self.audit_every and free_scores:
            raise ValueError("audit_every audits eval-view scoring rounds; free_scores makes "
                             "its rounds from training steps: use one or the other")
        self._index: pa.Table | None = None
        self.totals = {"scoring_s": 0.0, "selection_s": 0.0}
        self.last = dict(self.totals)  # the time the latest subset() call spent
        if self.out is None and current_world()[1] > 1:
            raise ValueError("under torch.distributed the ranks share the index through a "
                             "folder: pass out=")
        if self.out is not None and self.index_path.exists():
            self._index = self._checked(read_index(self.index_path), str(self.index_path))

    # ------------------------------------------------------------------ paths and settings
    @property
    def index_path(self) -> Path:
        """The run's index: ``out/index.parquet``."""
        return self.out / "index.parquet"

    def round_path(self, epoch: int) -> Path:
        """Where the scoring round of ``epoch`` is written (``RoundScorer.round_path``)."""
        return self.scorer.round_path(epoch)

    def settings(self) -> dict:
        """What decides the subsets (the index's metadata)."""
        return {"method": self.method, "fraction": self.fraction, "seed": self.seed,
                "R": self.reselect_every, "schedule": self.schedule, "epochs": self.epochs,
                "per_class": self.per_class, "options": self.options_given,
                "fingerprint": self.rows.fingerprint,
                **({"free_scores": True} if self.steps is not None else {}),
                **({"exclude": {"count": len(self.exclude), "ids_sha256": hashlib.sha256(
                    self.exclude.tobytes()).hexdigest()}} if len(self.exclude) else {}),
                **({"audit_every": self.audit_every} if self.audit_every else {})}

    def _settings_as_saved(self) -> dict:
        """``settings()`` as it reads back from a file's JSON (tuples as lists, ...)."""
        return json.loads(json.dumps(self.settings(), sort_keys=True, default=str))

    def _checked(self, index: pa.Table, where: str) -> pa.Table:
        have = table_metadata(index)
        mine = self._settings_as_saved()
        # keys an older index lacks are not compared; those of _WHEN_ON are absent when off
        differ = sorted(k for k in (*_SETTINGS, "fingerprint")
                        if (k in have or k in _WHEN_ON) and have.get(k) != mine.get(k))
        if differ:
            raise ValueError(f"{where} was made with other settings ({', '.join(differ)}: "
                             f"{[have.get(k) for k in differ]} against "
                             f"{[mine.get(k) for k in differ]}); use another folder or the "
                             "same settings")
        return index

    @property
    def index(self) -> pa.Table | None:
        """Every epoch's subset selected so far (the index contract), or None."""
        return self._index

    def has(self, epoch: int) -> bool:
        """Whether the index already holds ``epoch``'s subset."""
        return self._index is not None and epoch in index_epochs(self._index)

    def score(self, model: nn.Module, epoch: int, **meta) -> str | pa.Table:
        """Score every sample with ``model`` as the round of ``epoch`` (``RoundScorer``)."""
        return self.scorer.score(model, epoch, **meta)

    def _sources(self, epoch: int) -> list:
        """The rounds the method reads: the latest at or before ``epoch``, or all of them."""
        if not self.spec.columns:
            return [ids_only_table(self.rows)]
        if self.spec.all_rounds:
            return self._scoring_rounds(epoch)
        usable = sorted(e for e in self.scorer.rounds if e <= epoch)
        return [self.scorer.rounds[e] for e in usable[-1:]]

    # ------------------------------------------------------------------ selecting
    def _scoring_rounds(self, epoch: int) -> list:
        """Every scoring round at or before ``epoch``: this sitting's and the folder's."""
        rounds = dict(self.scorer.rounds)
        if self.out is not None:
            for p in (self.out / "scores").glob("epoch_*.parquet"):
                rounds.setdefault(int(p.stem.split("_")[1]), str(p))
        return [rounds[e] for e in sorted(rounds) if e <= epoch]

    def _select(self, epoch: int, model: nn.Module | None) -> None:
        t0 = time.perf_counter()
        audit_now = self.audits.due(epoch)
        if self.spec.columns and self.steps is not None and (self.steps.started
                                                             or self.spec.partial):
            # a round from the training steps since the last one: no forward pass
            self.scorer.keep(self.steps.table(epoch), epoch)
        elif self.spec.columns or audit_now:
            if model is None:
                raise ValueError(f"epoch {epoch} needs a scoring round: pass the model")
            self.score(model, epoch)
            if self.steps is not None:
                self.steps.start_from(self.scorer.last_table)
        t1 = time.perf_counter()
        sources = self._sources(epoch)
        # the folder's rounds are listed only for an audit that is due
        excluded = self.audits.excluded(
            epoch, self._scoring_rounds(epoch) if audit_now else None, len(self.rows))
        chosen = select(sources, self.method, self.fraction, epoch=epoch, epochs=self.epochs,
                        schedule=self.schedule, seed=self.seed, per_class=self.per_class,
                        min_per_class=self.min_per_class, options=self.options,
                        exclude=excluded if len(excluded) else None)
        epochs = range(epoch, min(epoch + self.reselect_every, self.epochs))
        meta = {**self.settings(), "sources": [s for s in sources if isinstance(s, str)]}
        if self.out is None:
            new = index_table({e: chosen for e in epochs}, metadata=meta)
            self._index = new if self._index is None else merge_index(self._index, new)
        else:
            self._index = add_to_index(self.index_path, chosen, epochs, replace=True,
                                       metadata=meta)
        self.last = {"scoring_s": t1 - t0, "selection_s": time.perf_counter() - t1}

    def subset(self, epoch: int, model: nn.Module | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The subset of ``epoch``: selected now unless the index already has it.

        Under torch.distributed, rank 0 scores, selects and writes; the others wait and
        read the index.

        Args:
            epoch: the epoch, 0-based.
            model: the student of the moment, scored first when the method reads scores
                and a selection round is due.

        Returns:
            ``(sample_ids ascending, loss weights)``.

        Raises:
            ValueError: ``epoch`` is outside the run, or a round is due for a method that
                reads scores and no ``model`` is given.
        """
        non_negative_int("epoch", epoch)
        if epoch >= self.epochs:
            raise ValueError(f"epoch {epoch} is past the run's end (epochs={self.epochs})")
        rank, world = current_world()
        self.last = {"scoring_s": 0.0, "selection_s": 0.0}
        if rank == 0 and not self.has(epoch):
            if epoch % self.reselect_every != 0:
                log.warning("epoch %d is not a selection epoch but the index has no subset "
                            "for it: selecting now", epoch)
            self._select(epoch, model)
        barrier(world)  # the other ranks read what rank 0 selected
        if rank != 0:
            self._index = read_index(self.index_path)
        for k, v in self.last.items():
            self.totals[k] += v
        if self.steps is not None:
            self.steps.epoch = epoch
        return epoch_rows(self._index, epoch)

    def record(self, positions, logits, teacher_logits, labels) -> None:
        """Record one training step's outputs (``free_scores=True``).

        Their scores make the next selection's round instead of a scoring pass.

        Args:
            positions: the batch's row positions in the dataset.
            logits: the student's logits of the batch.
            teacher_logits: the full-precision teacher's logits, or None.
            labels: the batch's labels.

        Raises:
            ValueError: the selector was made without ``free_scores=True``.
        """
        if self.steps is None:
            raise ValueError("record() needs AdaptiveSelector(..., free_scores=True)")
        self.steps.record(positions, logits, teacher_logits, labels)

    def positions(self, epoch: int, model: nn.Module | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Like ``subset``, as row positions in the dataset instead of sample ids.

        Args:
            epoch: as for ``subset``.
            model: as for ``subset``.

        Returns:
            ``(positions, loss weights)``.
        """
        ids, weights = self.subset(epoch, model)
        return self.rows.positions(ids), weights

    def sampler(self, epoch: int, model: nn.Module | None = None, *,
                shuffle: bool = True) -> SubsetSampler:
        """A torch Sampler over ``epoch``'s subset, selecting it first if needed.

        Args:
            epoch: as for ``subset``.
            model: as for ``subset``.
            shuffle: a new order every epoch, seeded by the selector's seed.

        Returns:
            A sampler of dataset positions (this rank's share under torch.distributed);
            its ``weights_of(indices)`` gives the index's loss weights of a batch.
        """
        self.subset(epoch, model)
        return DistributedSubsetSampler(self._index, epoch, data=self.rows, shuffle=shuffle,
                                        seed=self.seed)

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> dict:
        """What resumes this selector: its subsets so far, settings and time totals.

        Returns:
            A dict of tensors, strings and numbers (fit for ``torch.save`` and
            ``weights_only`` loading).
        """
        state = {"settings": json.dumps(self.settings(), sort_keys=True, default=str),
                 "totals": dict(self.totals)}
        if self._index is not None:
            state["index"] = {c: torch.from_numpy(self._index.column(c).to_numpy().copy())
                              for c in ("epoch", "sample_id", "weight")}
            state["index_metadata"] = json.dumps(table_metadata(self._index), sort_keys=True)
        if self.steps is not None:
            state["steps"] = self.steps.state_dict()
        if self.audits.flags:
            state["flags"] = self.audits.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()``; an index already in ``out`` takes precedence.

        Args:
            state: what ``state_dict`` returned.

        Raises:
            ValueError: the state was saved by a selector with other settings.
        """
        saved = json.loads(state["settings"])
        mine = self._settings_as_saved()
        differ = sorted(k for k in mine if saved.get(k) != mine[k])
        if differ:
            raise ValueError(f"the state was saved by a selector with other settings: {differ}")
        self.totals = {k: float(v) for k, v in state["totals"].items()}
        if self.steps is not None and "steps" in state:
            self.steps.load_state_dict(state["steps"])
        self.audits.load_state_dict(state.get("flags", {}))
        if "index" not in state or (self.out is not None and self._index is not None):
            return  # an index on disk is at least as recent as the state
        cols = {c: t.numpy() for c, t in state["index"].items()}
        table = pa.table(cols, schema=INDEX_SCHEMA)
        self._index = read_index(with_metadata(table, json.loads(state["index_metadata"])))
        if self.out is not None and current_world()[0] == 0:
            with index_lock(self.index_path):
                write_table(self._index, self.index_path, overwrite=True)

