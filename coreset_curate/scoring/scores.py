"""Per-sample scores from the logits of a (quantized) student and an optional reference.

``score_table(student, data, reference=fp_model, epoch=t)`` runs one forward pass per
model per batch under ``torch.inference_mode()`` with the eval transform and returns a
``pyarrow.Table`` that follows the score-table contract (``tables.SCORE_SCHEMA``). The
scores it computes are those of the registry (``measures``; ``register_score`` adds one).
Users reach it as ``score_dataset`` (``scoring.entry``), which also writes to a file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from ..common.checks import InputTypeError, non_negative_int, resolve_device
from ..data import EvalTransform, as_rows, iter_batches
from ..data.adapter import IdentityTransform
from ..common.progress import progress
from ..quant import config_dict
# the registry's names stay importable from here (``__all__``)
from .measures import (DEFAULT_SCORES, SCORES, BatchOutputs, compute_scores, last_linear,
                       list_scores, register_score)
from .refcache import ReferenceOutputs
from ..common.tables import SCORE_SCHEMA, make_metadata, with_metadata

__all__ = ["BatchOutputs", "SCORES", "register_score", "list_scores", "score_table",
           "compute_scores", "scoring_transform"]

log = logging.getLogger(__name__)


def _check_model(model: nn.Module, what: str) -> None:
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"{what} must be a torch.nn.Module; got {type(model).__name__}")


def _feature_hook(student: nn.Module, sink: list) -> torch.utils.hooks.RemovableHandle | None:
    """Capture what the last linear layer multiplies by its weights: its input, after the
    layer's own input quantization when it has one. None for a model without a Linear
    layer (its ``grand_last`` and ``embedding`` cannot be computed)."""
    try:
        layer = last_linear(student)
    except ValueError:
        return None
    a_quant = getattr(layer, "a_quant", None)
    if a_quant is not None:
        return a_quant.register_forward_hook(lambda m, args, out: sink.append(out.flatten(1)))
    return layer.register_forward_pre_hook(lambda m, args: sink.append(args[0].flatten(1)))


def _logits(model: nn.Module, x: torch.Tensor, what: str) -> torch.Tensor:
    out = model(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        kind = (f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
                else type(out).__name__)
        raise InputTypeError(f"the {what} must return a (batch, classes) tensor of logits; "
                             f"got {kind}")
    return out.float()


def _score_names(extra: list[str] | None) -> list[str]:
    names = list(DEFAULT_SCORES)
    for name in extra or []:
        if name not in SCORES:
            raise ValueError(f"unknown score {name!r}; registered scores: {sorted(SCORES)}")
        if name not in names:
            names.append(name)
    return names


def scoring_transform(rows, transform):
    """The transform scoring applies to ``rows``.

    Args:
        rows: the rows to score (``data.adapter.as_rows`` of a dataset).
        transform: the transform given by the caller, or None.

    Returns:
        ``transform`` for the toolkit's own images (it must be the deterministic
        ``EvalTransform``); an identity for a torch Dataset, which applies its own.

    Raises:
        TypeError: a transform is given for a torch Dataset, none is given for the
            toolkit's own images, or it is not an ``EvalTransform`` (augmentation).
    """
    if getattr(rows, "transformed", False):
        if transform is not None and not isinstance(transform, IdentityTransform):
            raise InputTypeError("a torch Dataset applies its own transforms: leave transform "
                                 "unset")
        return IdentityTransform()
    if transform is None:
        raise InputTypeError("scoring a dataset of this toolkit needs transform=, its "
                             "deterministic EvalTransform (default_transforms(train)[1])")
    if type(transform) is not EvalTransform:
        raise InputTypeError("scoring needs the deterministic EvalTransform (no augmentation)")
    return transform


@dataclass
class _Collected:
    columns: dict[str, list[torch.Tensor]]
    features: list[torch.Tensor]
    probs: list[torch.Tensor]


def _run_batches(student, live_ref, cached, rows, transform, names, *, batch_size, device,
                 embeddings, probs, bf16, channels_last) -> _Collected:
    """One forward of each model per batch; the scores of every batch, on the CPU."""
    got = _Collected({n: [] for n in names}, [], [])
    batch_features: list[torch.Tensor] = []
    hook = _feature_hook(student, batch_features)
    if hook is None and embeddings:
        raise ValueError("embeddings=True needs a model with an nn.Linear classifier layer")
    num_classes = None
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    try:
        with torch.inference_mode(), autocast, \
                progress(total=len(rows), desc="score", unit="img") as bar:
            for pos, images, labels in iter_batches(rows, batch_size):
                if cuda and images.device.type == "cpu":
                    images, labels = images.pin_memory(), labels.pin_memory()
                x = transform(images.to(device, non_blocking=True))
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = labels.to(device, non_blocking=True)
                batch_features.clear()
                logits = _logits(student, x, "student")
                if num_classes is None:
                    num_classes = logits.shape[1]
                    if int(rows.labels.max()) >= num_classes:
                        raise ValueError(f"labels reach {int(rows.labels.max())} but the "
                                         f"student outputs {num_classes} classes")
                feats = batch_features[-1] if batch_features else None
                out = BatchOutputs(
                    logits, y,
                    ref_logits=None if live_ref is None else _logits(live_ref, x, "reference"),
                    given_ref_probs=cached.rows(pos, device) if cached is not None else None,
                    features=feats)
                for name, value in compute_scores(out, names).items():
                    if value is not None:
                        got.columns[name].append(value.cpu())
                if embeddings:
                    got.features.append(feats.to(torch.float16).cpu())
                if probs:
                    got.probs.append(out.probs.float().cpu())
                bar.update(len(labels))
    finally:
        if hook is not None:
            hook.remove()
    return got


def _fixed_list(rows: list[torch.Tensor]) -> pa.FixedSizeListArray:
    values = torch.cat(rows).numpy()
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _table(rows, names: list[str], epoch: int, got: _Collected, embeddings: bool,
           probs: bool) -> pa.Table:
    n = len(rows)
    arrays = {
        "sample_id": pa.array(rows.sample_ids, pa.int64()),
        "label": pa.array(rows.labels.numpy(), pa.int64()),
        "epoch": pa.array(np.full(n, epoch, dtype=np.int32), pa.int32()),
    }
    for name in names:
        dtype = SCORES[name].dtype
        if got.columns[name]:
            values = torch.cat(got.columns[name]).numpy()
            arrays[name] = pa.array(values.astype(dtype.to_pandas_dtype()), dtype)
        else:
            arrays[name] = pa.nulls(n, dtype)
    schema = pa.schema(list(SCORE_SCHEMA) + [pa.field(n, SCORES[n].dtype) for n in names
                                             if n not in SCORE_SCHEMA.names])
    for key, wanted, parts in (("embedding", embeddings, got.features),
                               ("probs", probs, got.probs)):
        if wanted:
            arrays[key] = _fixed_list(parts)
            schema = schema.append(pa.field(key, arrays[key].type))
    return pa.table(arrays, schema=schema)


def score_table(
    student: nn.Module,
    data,
    reference: nn.Module | ReferenceOutputs | None = None,
    *,
    transform: EvalTransform | None = None,
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
    """The score table of every sample of ``data`` scored by ``student`` (and
    ``reference`` for DS): what ``score_dataset`` returns without ``out``; its docstring
    (``scoring.entry``) documents the arguments, the table and the errors."""
    _check_model(student, "student")
    rows = as_rows(data)
    cached = reference if isinstance(reference, ReferenceOutputs) else None
    if cached is not None:
        cached.check(rows)
    elif reference is not None:
        _check_model(reference, "reference")
    transform = scoring_transform(rows, transform)
    non_negative_int("epoch", epoch)
    names = _score_names(scores)
    device = resolve_device(device)
    live_ref = None if cached is not None else reference
    models = [m for m in (student, live_ref) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval().to(device)
    start = time.perf_counter()
    try:
        got = _run_batches(student, live_ref, cached, rows, transform, names,
                           batch_size=batch_size, device=device, embeddings=embeddings,
                           probs=probs, bf16=bf16, channels_last=channels_last)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    seconds = time.perf_counter() - start
    table = _table(rows, names, epoch, got, embeddings, probs)
    meta = make_metadata(
        **config_dict(student),
        fingerprint=rows.fingerprint,
        num_classes=rows.num_classes,
        class_names=rows.class_names,
        transform=transform.to_dict(),
        epoch=epoch,
        has_reference=reference is not None,
        reference_cache=cached.key if cached is not None else None,
        **(metadata or {}),
    )
    n = len(rows)
    log.info("scored %d samples at epoch %d in %.1f s (%.0f img/s)", n, epoch, seconds,
             n / max(seconds, 1e-9))
    return with_metadata(table, meta)
