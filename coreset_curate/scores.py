"""Per-sample scores from the logits of a (quantized) student and an optional reference.

``score_dataset(student, data, reference=fp_model, epoch=t)`` runs one forward pass per
model per batch under ``torch.inference_mode()`` with the eval transform and returns a
``pyarrow.Table`` that follows the score-table contract (``tables.SCORE_SCHEMA``).

Scores are registered by name; a new score is one small function of the batch outputs::

    @register_score("my_score", pa.float32())
    def my_score(out: BatchOutputs) -> torch.Tensor: ...
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from .data import EvalTransform, ImageData, iter_batches
from .models import last_linear
from .progress import progress
from .quant import config_dict
from .refcache import ReferenceOutputs
from .tables import SCORE_SCHEMA, make_metadata, with_metadata

__all__ = ["BatchOutputs", "SCORES", "register_score", "score_dataset", "compute_scores"]

log = logging.getLogger(__name__)


@dataclass
class BatchOutputs:
    """Logits of one batch and the quantities the scores share (computed once, lazily)."""

    logits: torch.Tensor
    labels: torch.Tensor
    ref_logits: torch.Tensor | None = None
    given_ref_probs: torch.Tensor | None = None  # cached reference softmax, instead of logits
    features: torch.Tensor | None = None  # input of the student's last linear layer

    @property
    def has_reference(self) -> bool:
        return self.ref_logits is not None or self.given_ref_probs is not None

    @cached_property
    def log_probs(self) -> torch.Tensor:
        return F.log_softmax(self.logits.float(), dim=1)

    @cached_property
    def probs(self) -> torch.Tensor:
        return self.log_probs.exp()

    @cached_property
    def onehot(self) -> torch.Tensor:
        return F.one_hot(self.labels, self.logits.shape[1]).to(self.probs.dtype)

    @cached_property
    def ref_probs(self) -> torch.Tensor | None:
        if self.given_ref_probs is not None:
            return self.given_ref_probs.float()
        return None if self.ref_logits is None else F.softmax(self.ref_logits.float(), dim=1)

    def at_label(self, t: torch.Tensor) -> torch.Tensor:
        return t.gather(1, self.labels[:, None]).squeeze(1)


@dataclass(frozen=True)
class ScoreSpec:
    fn: Callable[[BatchOutputs], torch.Tensor | None]
    dtype: pa.DataType
    needs_reference: bool


SCORES: dict[str, ScoreSpec] = {}


def register_score(name: str, dtype: pa.DataType, needs_reference: bool = False) -> Callable:
    def add(fn):
        if name in SCORES:
            raise ValueError(f"score {name!r} is already registered")
        SCORES[name] = ScoreSpec(fn, dtype, needs_reference)
        return fn

    return add


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
def _grand_last(o: BatchOutputs) -> torch.Tensor:
    """Exact norm of the per-sample gradient of the cross-entropy w.r.t. the weight matrix
    of the last linear layer (as the layer uses it, after fake quantization):
    ||softmax - onehot|| * ||input features||."""
    if o.features is None:
        raise RuntimeError("grand_last needs the last layer's input features")
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
    """Every score in ``names`` for one batch; scores that need a missing reference are None."""
    result = {}
    for name in names:
        spec = SCORES[name]
        result[name] = None if (spec.needs_reference and not out.has_reference) else spec.fn(out)
    return result


def _check_model(model: nn.Module, what: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} must be a torch.nn.Module; got {type(model).__name__}")


def _feature_hook(student: nn.Module, sink: list) -> torch.utils.hooks.RemovableHandle:
    """Capture what the last linear layer multiplies by its weights: its input, after the
    layer's own input quantization when it has one."""
    layer = last_linear(student)
    a_quant = getattr(layer, "a_quant", None)
    if a_quant is not None:
        return a_quant.register_forward_hook(lambda m, args, out: sink.append(out.flatten(1)))
    return layer.register_forward_pre_hook(lambda m, args: sink.append(args[0].flatten(1)))


def score_dataset(
    student: nn.Module,
    data: ImageData,
    reference: nn.Module | ReferenceOutputs | None = None,
    *,
    transform: EvalTransform,
    epoch: int = 0,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    scores: list[str] | None = None,
    embeddings: bool = False,
    probs: bool = False,
    metadata: dict | None = None,
    bf16: bool = False,
    channels_last: bool = False,
) -> pa.Table:
    """Score every sample of ``data`` with ``student`` (and ``reference`` for DS).

    ``bf16=True`` runs the forward passes under bfloat16 autocast (CUDA; the scores
    themselves are computed in float32 from the logits); ``channels_last=True`` feeds
    channels-last batches. On CUDA, batches are copied from pinned memory without blocking.

    ``reference`` is a full-precision model, or its outputs computed once
    (``refcache.cached_reference``), which gives the same scores without its forward pass.
    Models run in eval mode with the eval ``transform``; the table has one row per sample,
    sorted by position in ``data``, with the contract's columns, ``max_prob`` and
    ``grand_last``, and any extra registered ``scores`` asked for. ``embeddings=True`` adds
    ``embedding``, the student's penultimate features (the input of its last linear layer)
    as a fixed-size list of float16, for the diversity-based selection methods.
    ``probs=True`` adds ``probs``, the student's whole softmax as a fixed-size list of
    float32 (what the noise audit's ``channel`` suspicion reads).
    ``metadata`` (for example the architecture name) is merged into the table's metadata.
    """
    _check_model(student, "student")
    cached = isinstance(reference, ReferenceOutputs)
    if cached:
        reference.check(data)
    elif reference is not None:
        _check_model(reference, "reference")
    if type(transform) is not EvalTransform:
        raise TypeError("scoring needs the deterministic EvalTransform (no augmentation)")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative integer; got {epoch!r}")
    names = list(DEFAULT_SCORES)
    for extra in scores or []:
        if extra not in SCORES:
            raise ValueError(f"unknown score {extra!r}; registered scores: {sorted(SCORES)}")
        if extra not in names:
            names.append(extra)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    live_ref = None if cached else reference
    models = [m for m in (student, live_ref) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval().to(device)
    columns: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    batch_features: list[torch.Tensor] = []
    kept_features: list[torch.Tensor] = []
    kept_probs: list[torch.Tensor] = []
    hook = _feature_hook(student, batch_features)
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    start = time.perf_counter()
    try:
        with torch.inference_mode(), autocast, \
                progress(total=len(data), desc="score", unit="img") as bar:
            for pos, images, labels in iter_batches(data, batch_size):
                if cuda and images.device.type == "cpu":
                    images, labels = images.pin_memory(), labels.pin_memory()
                x = transform(images.to(device, non_blocking=True))
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = labels.to(device, non_blocking=True)
                batch_features.clear()
                logits = student(x).float()
                feats = batch_features[-1]
                out = BatchOutputs(
                    logits, y,
                    ref_logits=None if live_ref is None else live_ref(x).float(),
                    given_ref_probs=reference.rows(pos, device) if cached else None,
                    features=feats)
                for name, value in compute_scores(out, names).items():
                    if value is not None:
                        columns[name].append(value.cpu())
                if embeddings:
                    kept_features.append(feats.to(torch.float16).cpu())
                if probs:
                    kept_probs.append(out.probs.float().cpu())
                bar.update(len(labels))
    finally:
        hook.remove()
        for m, mode in zip(models, modes):
            m.train(mode)
    seconds = time.perf_counter() - start
    n = len(data)
    arrays = {
        "sample_id": pa.array(data.sample_ids, pa.int64()),
        "label": pa.array(data.labels.numpy(), pa.int64()),
        "epoch": pa.array(np.full(n, epoch, dtype=np.int32), pa.int32()),
    }
    for name in names:
        dtype = SCORES[name].dtype
        if columns[name]:
            values = torch.cat(columns[name]).numpy()
            arrays[name] = pa.array(values.astype(dtype.to_pandas_dtype()), dtype)
        else:
            arrays[name] = pa.nulls(n, dtype)
    schema = pa.schema(list(SCORE_SCHEMA) + [pa.field(n, SCORES[n].dtype) for n in names
                                             if n not in SCORE_SCHEMA.names])
    if embeddings:
        emb = torch.cat(kept_features).numpy()
        arrays["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)),
                                                                emb.shape[1])
        schema = schema.append(pa.field("embedding", arrays["embedding"].type))
    if probs:
        soft = torch.cat(kept_probs).numpy()
        arrays["probs"] = pa.FixedSizeListArray.from_arrays(pa.array(soft.reshape(-1)),
                                                            soft.shape[1])
        schema = schema.append(pa.field("probs", arrays["probs"].type))
    table = pa.table(arrays, schema=schema)
    meta = make_metadata(
        **config_dict(student),
        fingerprint=data.fingerprint,
        num_classes=data.num_classes,
        class_names=data.class_names,
        transform=transform.to_dict(),
        epoch=epoch,
        has_reference=reference is not None,
        reference_cache=reference.key if cached else None,
        **(metadata or {}),
    )
    log.info("scored %d samples at epoch %d in %.1f s (%.0f img/s)", n, epoch, seconds,
             n / max(seconds, 1e-9))
    return with_metadata(table, meta)
