"""The score registry: per-sample scores as small functions of one batch's outputs.

A score is registered by name with its Arrow type; ``compute_scores`` computes the
registered ones a scoring pass asks for::

    @register_score("my_score", pa.float32())
    def my_score(out: BatchOutputs) -> torch.Tensor: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from ..common.registry import Registry
from ..common.tables import SCORE_SCHEMA

__all__ = ["BatchOutputs", "SCORES", "register_score", "list_scores", "compute_scores",
           "CONTRACT_SCORES", "DEFAULT_SCORES", "last_linear"]

@dataclass
class BatchOutputs:
    """Logits of one batch and the quantities the scores share (computed once, lazily).

    What a registered score function receives.

    Attributes:
        logits: the student's logits, ``(batch, classes)``.
        labels: the given labels, ``(batch,)`` int64.
        ref_logits: the full-precision reference's logits, or None.
        given_ref_probs: the reference's softmax from a cache, instead of its logits.
        features: the input of the student's last linear layer, or None.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    ref_logits: torch.Tensor | None = None
    given_ref_probs: torch.Tensor | None = None  # cached reference softmax, instead of logits
    features: torch.Tensor | None = None  # input of the student's last linear layer

    @property
    def has_reference(self) -> bool:
        """Whether a reference view (logits or cached softmax) is there."""
        return self.ref_logits is not None or self.given_ref_probs is not None

    @cached_property
    def log_probs(self) -> torch.Tensor:
        """The student's log-softmax, in float32."""
        return F.log_softmax(self.logits.float(), dim=1)

    @cached_property
    def probs(self) -> torch.Tensor:
        """The student's softmax, in float32."""
        return self.log_probs.exp()

    @cached_property
    def onehot(self) -> torch.Tensor:
        """The given labels one-hot, ``(batch, classes)``."""
        return F.one_hot(self.labels, self.logits.shape[1]).to(self.probs.dtype)

    @cached_property
    def ref_probs(self) -> torch.Tensor | None:
        """The reference's softmax in float32, or None without a reference."""
        if self.given_ref_probs is not None:
            return self.given_ref_probs.float()
        return None if self.ref_logits is None else F.softmax(self.ref_logits.float(), dim=1)

    def at_label(self, t: torch.Tensor) -> torch.Tensor:
        """The entries of a ``(batch, classes)`` tensor at each sample's given label."""
        return t.gather(1, self.labels[:, None]).squeeze(1)


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier layer (the last ``nn.Linear`` in module order)."""
    found = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError("model has no nn.Linear layer")
    return found[-1]


@dataclass(frozen=True)
class ScoreSpec:
    fn: Callable[[BatchOutputs], torch.Tensor | None]
    dtype: pa.DataType
    needs_reference: bool


SCORES: Registry = Registry(
    "score", wrap=lambda fn, dtype, needs_reference=False: ScoreSpec(fn, dtype, needs_reference))


def list_scores() -> list[str]:
    """Names of the registered scores (columns a score table can hold).

    Returns:
        The names, sorted.
    """
    return SCORES.names()


def register_score(name: str, dtype: pa.DataType, needs_reference: bool = False) -> Callable:
    """Decorator that registers a per-sample score, a column ``score_dataset`` can add.

    The function takes a ``BatchOutputs`` and returns one value per sample (a 1-D tensor)
    or None where it cannot be computed.

    Args:
        name: the column name (ask for it with ``score_dataset(..., scores=[name])``).
        dtype: the column's Arrow type, for example ``pa.float32()``.
        needs_reference: the score reads the reference view; it is null when scoring
            has no reference.

    Returns:
        The decorator; it returns the function unchanged.

    Raises:
        ValueError: (when the decorator is applied) ``name`` is already registered.
    """
    return SCORES.register(name, dtype=dtype, needs_reference=needs_reference)


@register_score("evs", pa.float32())
def _evs(o: BatchOutputs) -> torch.Tensor:
    """Error vector score: || softmax(student) - onehot(label) ||_2."""
    return (o.probs - o.onehot).norm(dim=1)


@register_score("ds", pa.float32(), needs_reference=True)
def _ds(o: BatchOutputs) -> torch.Tensor:
    """Disagreement score: || softmax(student) - softmax(reference) ||_2."""
    return (o.probs - o.ref_probs).norm(dim=1)


@register_score("loss", pa.float32())
def _loss(o: BatchOutputs) -> torch.Tensor:
    return -o.at_label(o.log_probs)


@register_score("margin", pa.float32())
def _margin(o: BatchOutputs) -> torch.Tensor:
    """Logit of the label minus the largest other logit (negative when misclassified)."""
    logits = o.logits.float()
    other = logits.scatter(1, o.labels[:, None], float("-inf")).amax(dim=1)
    return o.at_label(logits) - other


@register_score("entropy", pa.float32())
def _entropy(o: BatchOutputs) -> torch.Tensor:
    return -(o.probs * o.log_probs).sum(dim=1)


@register_score("pred", pa.int64())
def _pred(o: BatchOutputs) -> torch.Tensor:
    return o.logits.argmax(dim=1)


@register_score("prob_label", pa.float32())
def _prob_label(o: BatchOutputs) -> torch.Tensor:
    return o.at_label(o.probs)


@register_score("max_prob", pa.float32())
def _max_prob(o: BatchOutputs) -> torch.Tensor:
    """Probability of the student's top class (least-confidence selection reads it)."""
    return o.probs.amax(dim=1)


@register_score("grand_last", pa.float32())
def _grand_last(o: BatchOutputs) -> torch.Tensor | None:
    """Exact norm of the per-sample gradient of the cross-entropy w.r.t. the weight matrix
    of the last linear layer (as the layer uses it, after fake quantization):
    ||softmax - onehot|| * ||input features||."""
    if o.features is None:
        return None  # a model without an nn.Linear classifier
    return (o.probs - o.onehot).norm(dim=1) * o.features.float().norm(dim=1)


@register_score("ref_pred", pa.int64(), needs_reference=True)
def _ref_pred(o: BatchOutputs) -> torch.Tensor:
    return o.ref_probs.argmax(dim=1)


@register_score("ref_prob_label", pa.float32(), needs_reference=True)
def _ref_prob_label(o: BatchOutputs) -> torch.Tensor:
    return o.at_label(o.ref_probs)


CONTRACT_SCORES = [f.name for f in SCORE_SCHEMA if f.name not in ("sample_id", "label", "epoch")]
DEFAULT_SCORES = [*CONTRACT_SCORES, "max_prob", "grand_last"]


def compute_scores(out: BatchOutputs, names: list[str]) -> dict[str, torch.Tensor | None]:
    """Every score in ``names`` for one batch.

    Args:
        out: the batch's outputs.
        names: registered score names.

    Returns:
        ``{name: 1-D tensor}``; None for a score that needs a reference the batch lacks.
    """
    result = {}
    for name in names:
        spec = SCORES[name]
        result[name] = None if (spec.needs_reference and not out.has_reference) else spec.fn(out)
    return result
