"""The task seam: what differs between classification and detection, behind one interface.

The trainer, the selector and the scorer hold no branch on the task: they ask the task of
their data (``task_of``) or of their model (``task_for_model``) for the model, the
transforms, the calibration batches, the loss, one epoch of training, the metric and the
scores of a round. A third task is a module with a ``Task`` subclass and one
``TASKS.add`` line; a task may also add commands and a demo to the CLI (``cli``).

``TASKS`` may hold a task as ``"module:Class"``, imported (and the class instantiated) on
first use: the built-in tasks are declared so (``coreset_curate.tasks``), which keeps the
package, and the CLI's parser that reads the tasks' commands, free of torch until a task
is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from ..common.registry import Registry

__all__ = ["Task", "EpochInputs", "TASKS", "task_of", "task_for_model", "table_task",
           "list_tasks", "get_task", "score_checkpoint"]

TASKS: Registry = Registry("task")


def get_task(name: str) -> Task:
    """The registered task ``name``, imported first where it is declared as
    ``"module:Class"``.

    Args:
        name: a task's name (``list_tasks``).

    Returns:
        The ``Task``.

    Raises:
        ValueError: ``name`` is not registered (the message lists what is).
    """
    entry = TASKS.lookup(name)
    if isinstance(entry, str):
        module, _, cls = entry.partition(":")
        entry = TASKS[name] = getattr(import_module(module), cls)()
    return entry


@dataclass
class EpochInputs:
    """What one training epoch reads (the trainer fills it; a task's ``train_epoch`` takes
    what it needs)."""

    model: Any           # what the optimizer steps through (``Task.train_model``)
    data: Any            # the training split
    transform: Any       # its training view (None where the task's model takes raw images)
    optimizer: Any
    positions: Any       # the subset's positions, or None for all
    weights: Any         # per-sample loss weights, or None
    teacher: Any         # the distillation teacher, or None
    config: Any          # the run's TrainConfig
    generator: Any       # the augmentation stream
    scheduler: Any       # the per-step learning rate
    device: Any
    plan: Any            # this rank's batches under torch.distributed, or None
    on_batch: Any = None  # called with each batch's outputs (free scores), or None


class Task:
    """One task: subclasses fill in every method.

    Attributes:
        name: the registry name (``DetectionData.task`` says ``"detection"``; data that
            says nothing is ``"classification"``).
        metric: the metric that picks the best epoch (``"top1"``, ``"ap"``).
        model_noun: what a model of the task is called in messages ("classifier").
        trains_on: what its models train on, for messages.
        free_scores: whether a run may take its selection rounds from the training steps.
        metadata: added to a score table of this task's data (what readers need to know).
        scorer_batch_size: the default batch of a scoring pass.
        min_label: the lowest label its score tables hold (-1: a group of their own).
        label_rule: what an error about a table's labels adds for this task.
        summary_columns: the columns of a score table ``describe_table`` reads.
        audit_refusal: why the noise audit cannot read this task's score tables ("": it
            can).
        cli: the module that adds the task's commands and demo to ``coreset-curate``
            (``coreset_curate.cli.tasks``; "": none).
    """

    name = ""
    metric = ""
    model_noun = ""
    trains_on = ""
    free_scores = False
    metadata: dict = {}
    scorer_batch_size = 256
    min_label = 0
    label_rule = ""
    summary_columns: tuple = ("evs",)  # what describe_table reads
    audit_refusal = ""
    cli = ""

    def owns_model(self, arch: str) -> bool:
        """Whether ``arch`` names a registered model of this task."""
        raise NotImplementedError

    def create_model(self, arch: str, train, kwargs: dict):
        """A fresh model of ``arch`` for ``train``'s classes."""
        raise NotImplementedError

    def check_config(self, config) -> None:
        """Refuse what a run of this task does not take (a ``ValueError`` naming it)."""

    def inference_batch_size(self, device) -> int:
        """The default batch of evaluation and scoring passes on ``device``."""
        raise NotImplementedError

    def transforms(self, train, config) -> tuple:
        """(training view, evaluation view) of ``train``; None where the model takes raw
        images."""
        raise NotImplementedError

    def calibration_batches(self, train, config, eval_tf, device):
        """Input batches spread over ``train`` that set the LSQ steps."""
        raise NotImplementedError

    def train_model(self, model, config):
        """What the optimizer steps through: the model, or the model with its loss."""
        return model

    def train_epoch(self, inputs: EpochInputs) -> float:
        """One epoch over ``inputs.positions``; returns the mean training loss."""
        raise NotImplementedError

    def evaluate(self, model, test, eval_tf, *, batch_size: int, device) -> dict[str, float]:
        """The test split's metrics (``metric`` among them)."""
        raise NotImplementedError

    def shown(self, scores: dict[str, float], best: float | None = None) -> str:
        """The metrics as a log line shows them."""
        raise NotImplementedError

    def score_checkpoint(self, data, model: str, checkpoint, out, **options):
        """Score every sample of ``data`` with a checkpoint into the table ``out``
        (``score_checkpoint`` documents the options); returns its path."""
        raise NotImplementedError

    def describe_table(self, table) -> str:
        """A line about a written score table (``coreset-curate score`` prints it)."""
        raise NotImplementedError

    def score(self, scorer, model, epoch: int, device, metadata: dict):
        """The score table of one round: every sample of ``scorer.rows`` scored by
        ``model`` (``scorer``: the ``RoundScorer``, whose ``reference_outputs`` and
        ``cache`` the task may use)."""
        raise NotImplementedError


def score_checkpoint(data, model: str, checkpoint, out, **options):
    """Score every sample of ``data`` with the checkpoint of ``model`` into the score table
    ``out``, through the task of ``data`` (what ``coreset-curate score`` runs).

    Args:
        data: the dataset (``load_data``).
        model: a registered model of the data's task.
        checkpoint: the student's weights-only state dict (float: calibrated first).
        out: the score table to write.
        **options: ``w_bits``, ``a_bits``, ``first_last`` (the student's quantization),
            ``reference`` (a full-precision checkpoint for DS), ``epoch``, ``batch_size``,
            ``device``, ``model_kwargs`` (a detector's), ``overwrite``; for classifiers
            also ``mean``/``std`` or ``stats`` (a function returning the split whose pixel
            statistics normalise), ``shard_rows``, ``embeddings``, ``probs``, ``bf16``,
            ``channels_last``, ``cache_dir`` (the reference outputs' cache).

    Returns:
        The table's path (None on ranks other than 0 under torchrun).

    Raises:
        ValueError: an option the task does not take, or a checkpoint that does not fit.
    """
    return task_of(data).score_checkpoint(data, model, checkpoint, out, **options)


def list_tasks() -> list[str]:
    """Names of the registered tasks.

    Returns:
        The names, sorted.
    """
    return TASKS.names()


def task_of(data) -> Task:
    """The task of a dataset: its ``task`` attribute, ``"classification"`` where it has
    none.

    Args:
        data: a dataset (``load_data``, ``as_rows``, ``DetectionData``).

    Returns:
        The registered ``Task``.

    Raises:
        ValueError: the dataset names an unregistered task.
    """
    return get_task(getattr(data, "task", None) or "classification")


def table_task(metadata: dict) -> Task:
    """The task of a score table, from its metadata's ``task`` (classification where it
    names none, or none registered here)."""
    name = metadata.get("task") or "classification"
    return get_task(name if name in TASKS else "classification")


def task_for_model(arch: str) -> Task:
    """The task whose registry holds the model ``arch``; classification for a name no task
    holds (``create_model`` then says it is unknown).

    Args:
        arch: a model name.

    Returns:
        The registered ``Task``.
    """
    for name in TASKS.names():
        if get_task(name).owns_model(arch):
            return get_task(name)
    return get_task("classification")
