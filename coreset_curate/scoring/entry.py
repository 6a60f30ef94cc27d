"""Scoring's one entry point: ``score_dataset`` returns the score table of a dataset, or
with ``out=`` writes it to Parquet in resumable shards (``extract``)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import torch
from torch import nn

from ..common.checks import InputTypeError
from ..data import EvalTransform, ImageData
from .extract import extract_scores
from .refcache import ReferenceOutputs
from .scores import score_table, scoring_transform

__all__ = ["score_dataset"]

# what only the written table takes, with the values that mean "not asked for"
_FILE_ONLY = {"shard_rows": 8192, "overwrite": False, "rank": 0, "world_size": 1}


def score_dataset(
    student: nn.Module,
    data,
    reference: nn.Module | ReferenceOutputs | None = None,
    *,
    out: str | os.PathLike | None = None,
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
    shard_rows: int = 8192,
    overwrite: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> pa.Table | Path | None:
    """Score every sample of ``data`` with ``student`` (and ``reference`` for DS): the score
    table, or with ``out`` the table written to that Parquet file in resumable shards.

    Models run in eval mode (their mode is restored after), once per batch under
    ``torch.inference_mode()`` with the deterministic transform; on CUDA, batches are
    copied from pinned memory without blocking. With ``out``, shards of ``shard_rows`` rows
    are written atomically beside it (``.OUT.parts/``) as they finish: a run killed at any
    point and started again with the same arguments rescores nothing finished and ends with
    a table identical to an uninterrupted run; under ``torchrun`` (``rank``,
    ``world_size``) the ranks split the shards and rank 0 merges one table.

    Args:
        student: the (quantized) model being trained; any ``nn.Module`` returning logits.
        data: a dataset of this toolkit (``load_data``; then ``transform`` is its
            deterministic ``EvalTransform``), or (without ``out``) any map-style torch
            ``Dataset`` or ``DataLoader`` whose items are ``(x, y)`` or ``(sample_id, x,
            y)``, taken through its own transforms (see ``data.adapter``).
        reference: the full-precision model, or its outputs computed once
            (``refcache.cached_reference``: the same scores without its forward pass);
            None leaves ``ds`` and the ``ref_*`` columns null.
        out: the Parquet file to write (None: return the table).
        transform: the ``EvalTransform`` for the toolkit's own datasets; unset for a
            torch Dataset.
        epoch: the scoring round's epoch, written to the ``epoch`` column.
        batch_size: samples per forward pass.
        device: where the models run (default: CUDA when available, else CPU).
        scores: extra registered scores to add (``list_scores``).
        embeddings: add ``embedding``, the student's penultimate features (the input of
            its last linear layer) as a fixed-size list of float16, for the
            diversity-based selection methods.
        probs: add ``probs``, the student's whole softmax as a fixed-size list of float32
            (what the noise audit's ``channel`` suspicion reads).
        metadata: merged into the table's metadata (for example the architecture name).
        bf16: run the forward passes under bfloat16 autocast (CUDA; the scores are
            computed in float32 from the logits).
        channels_last: feed channels-last batches.
        shard_rows: with ``out``: rows a shard (the unit of resuming and of splitting
            across ranks).
        overwrite: with ``out``: replace an existing file.
        rank: with ``out``: this process's rank under torchrun.
        world_size: with ``out``: the number of ranks.

    Returns:
        Without ``out``, the score table: one row per sample, sorted by position in
        ``data``, with the contract's columns, ``max_prob`` and ``grand_last`` (null for
        a model without an ``nn.Linear`` classifier) and the extra columns asked for.
        With ``out``, its path on rank 0 and None on the other ranks.

    Raises:
        TypeError: a model is not an ``nn.Module`` or does not return ``(batch,
            classes)`` logits, the transform does not fit the data, or ``out`` is given
            for data that is not a dataset of this toolkit.
        ValueError: an unknown score name, a negative epoch, labels beyond the model's
            classes, ``embeddings=True`` for a model without a linear classifier, cached
            reference outputs that belong to other data, ``shard_rows`` that is not a
            positive integer, or a file-only option without ``out``.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
    """
    common = dict(transform=transform, epoch=epoch, batch_size=batch_size, device=device,
                  scores=scores, embeddings=embeddings, probs=probs, metadata=metadata,
                  bf16=bf16, channels_last=channels_last)
    file_only = dict(shard_rows=shard_rows, overwrite=overwrite, rank=rank,
                     world_size=world_size)
    if out is None:
        given = sorted(k for k, v in file_only.items() if v != _FILE_ONLY[k])
        if given:
            raise ValueError(f"{', '.join(given)} apply to a written table: pass out= (a "
                             "Parquet path), or leave them unset to get the table")
        return score_table(student, data, reference, **common)
    if not isinstance(data, ImageData):
        raise InputTypeError("out= writes resumable shards of a dataset of this toolkit "
                             f"(load_data), not a {type(data).__name__}: leave out unset to "
                             "get the table, then write_table(table, path)")
    scoring_transform(data, transform)  # a missing or augmenting one fails before any write
    return extract_scores(student, data, out, reference=reference, **common, **file_only)
