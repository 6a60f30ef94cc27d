"""Score extraction to Parquet in shards: resumable, and split across torchrun ranks.

``extract_scores(student, data, "scores.parquet", reference=..., transform=...)`` (what
``score_dataset(..., out="scores.parquet")`` runs) scores
the dataset in shards of ``shard_rows`` rows, each written atomically to a folder beside
the output (``.scores.parquet.parts/``) as soon as it is done. A run killed at any point
and started again with the same arguments rescoring nothing already finished, and ends
with a table identical to an uninterrupted run. Under ``torchrun`` each rank scores the
shards ``k`` with ``k % world_size == rank`` (none dropped or repeated, whatever the
sizes); rank 0 then merges one table sorted by sample_id and removes the parts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from ..common.atomic import write_text
from ..common.distributed import barrier, distributed_context
from ..data import EvalTransform, ImageData
from .refcache import ReferenceOutputs
from .scores import score_table
from ..common.tables import TableError, table_metadata, with_metadata, write_table
from ..common.checks import positive_int, resolve_device

__all__ = ["extract_scores", "state_sha256", "distributed_context"]  # the last re-exported

log = logging.getLogger(__name__)


def state_sha256(model: nn.Module) -> str:
    """sha256 of a model's state (parameter and buffer names, shapes and bytes).

    Args:
        model: any module.

    Returns:
        The hex digest; equal states give equal digests.
    """
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(json.dumps(value, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _claim_parts(parts: Path, out: Path, run_key: dict) -> None:
    """Make the shards folder this run's: shards of another run (other arguments, another
    checkpoint or dataset) are removed, and the run's key is written as its manifest."""
    run_key = json.loads(json.dumps(run_key, sort_keys=True))  # as it reads back from disk
    manifest = parts / "manifest.json"
    try:
        parts.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"cannot write next to {out}: {err}") from err
    if manifest.exists() and json.loads(manifest.read_text()) != run_key:
        log.warning("finished shards in %s belong to another run: starting again", parts)
        shutil.rmtree(parts)
        parts.mkdir(parents=True)
    if not manifest.exists():
        write_text(manifest, json.dumps(run_key, sort_keys=True))


def _merge_parts(parts: Path, files: list[Path], data, out: Path) -> None:
    """One table of every shard in dataset order, written to ``out``; the shards removed."""
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise TableError(f"shards {missing[:5]} are missing in {parts}")
    tables = [pq.read_table(f) for f in files]
    table = pa.concat_tables(tables)
    ids = table.column("sample_id").to_numpy()
    n = len(data)
    if len(ids) != n or not np.array_equal(ids, data.sample_ids):
        raise TableError(f"merged shards hold {len(ids)} rows, expected {n} in dataset order")
    order = np.argsort(ids, kind="stable")
    if not (np.diff(order) == 1).all():
        table = table.take(pa.array(order))
    meta = table_metadata(tables[0])
    meta["fingerprint"] = data.fingerprint
    meta["shards"] = len(files)
    write_table(with_metadata(table, meta), out, overwrite=True)
    shutil.rmtree(parts)


def extract_scores(
    student: nn.Module,
    data: ImageData,
    out: str | os.PathLike,
    *,
    reference: nn.Module | ReferenceOutputs | None = None,
    transform: EvalTransform,
    epoch: int = 0,
    batch_size: int = 512,
    device=None,
    shard_rows: int = 8192,
    scores: list[str] | None = None,
    embeddings: bool = False,
    probs: bool = False,
    metadata: dict | None = None,
    overwrite: bool = False,
    rank: int = 0,
    world_size: int = 1,
    bf16: bool = False,
    channels_last: bool = False,
) -> Path | None:
    """Score ``data`` into the Parquet file ``out`` in resumable shards (module doc).

    Args:
        student: the (quantized) model to score with.
        data: the dataset.
        out: the score table to write.
        reference: the full-precision model or its outputs (DS), or None.
        transform: the dataset's ``EvalTransform``.
        epoch: the scoring round's epoch.
        batch_size: samples per forward pass.
        device: where the models run.
        shard_rows: rows per shard (the unit of resuming and of splitting across ranks).
        scores: as for ``score_dataset``.
        embeddings: as for ``score_dataset``.
        probs: as for ``score_dataset``.
        metadata: as for ``score_dataset``.
        overwrite: replace an existing ``out``.
        rank: this process's rank (under torchrun).
        world_size: the number of ranks.
        bf16: as for ``score_dataset``.
        channels_last: as for ``score_dataset``.

    Returns:
        The path of ``out`` on rank 0; None on the other ranks.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        ValueError: ``shard_rows`` is not a positive integer, or what ``score_dataset``
            raises.
    """
    out = Path(out)
    positive_int("shard_rows", shard_rows)
    device = resolve_device(device)  # a device that is not there fails before any write
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    parts = out.with_name(f".{out.name}.parts")
    ref_id = (reference.key if isinstance(reference, ReferenceOutputs) else
              state_sha256(reference) if reference is not None else None)
    run_key = {"fingerprint": data.fingerprint, "student": state_sha256(student),
               "reference": ref_id, "transform": transform.to_dict(), "epoch": epoch,
               "shard_rows": shard_rows, "embeddings": embeddings, "probs": probs, "bf16": bf16}
    if scores:
        run_key["scores"] = list(scores)
    if hasattr(data, "view_key"):  # a streamed dataset: its crop decides the pixels too
        run_key["view"] = data.view_key()
    if rank == 0:
        _claim_parts(parts, out, run_key)
    barrier(world_size)
    n = len(data)
    shards = range((n + shard_rows - 1) // shard_rows)
    start = time.perf_counter()
    done = skipped = 0
    for k in shards:
        if k % world_size != rank:
            continue
        path = parts / f"part-{k:06d}.parquet"
        if path.exists():
            skipped += 1
            continue
        rows = np.arange(k * shard_rows, min((k + 1) * shard_rows, n))
        ref = reference.subset(rows) if isinstance(reference, ReferenceOutputs) else reference
        table = score_table(student, data.subset(rows), ref, transform=transform, epoch=epoch,
                            batch_size=batch_size, device=device, scores=scores,
                            embeddings=embeddings, probs=probs, metadata=metadata, bf16=bf16,
                            channels_last=channels_last)
        write_table(table, path, overwrite=True)
        done += 1
    seconds = time.perf_counter() - start
    log.info("rank %d: scored %d shards (%d already done) in %.1f s", rank, done, skipped,
             seconds)
    barrier(world_size)
    if rank != 0:
        return None
    _merge_parts(parts, [parts / f"part-{k:06d}.parquet" for k in shards], data, out)
    log.info("wrote %s: %d rows (%.0f img/s this sitting)", out, n,
             done * shard_rows / max(seconds, 1e-9))
    return out
