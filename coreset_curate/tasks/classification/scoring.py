"""A classifier checkpoint scored into a score table (what ``coreset-curate score`` runs):
the student built and quantized, a float checkpoint calibrated, DS against a reference whose
outputs are cached, and the table written shard by shard (``scoring.extract``)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["score_classifier"]


def score_classifier(data, model: str, checkpoint, out, *, w_bits: int = 32, a_bits: int = 32,
                     first_last: str = "int8", reference=None, epoch: int = 0,
                     batch_size: int = 256, device=None, mean=None, std=None, stats=None,
                     shard_rows: int = 8192, embeddings: bool = False, probs: bool = False,
                     bf16: bool = False, channels_last: bool = False, cache_dir=None,
                     model_kwargs: dict | None = None,
                     overwrite: bool = False) -> Path | None:
    """Score every sample of ``data`` with the checkpoint of ``model`` (``score_checkpoint``
    documents the arguments); returns the table's path (None on ranks other than 0)."""
    import torch

    from ...common.checkpoint import load_checkpoint, sha256_of
    from ...common.distributed import distributed_context
    from ...data import default_transforms, iter_batches, spread_positions
    from ...quant import FLOAT_BITS, calibrate_, quantize_model
    from ...scoring.extract import extract_scores
    from ...scoring.refcache import cached_reference
    from .models import create_model

    if model_kwargs:
        raise ValueError("--model-kwargs applies to detectors (coco:ROOT data)")
    rank, world = distributed_context()
    if mean is not None or std is not None:
        _, eval_tf = default_transforms(data, mean=mean, std=std)
    else:
        _, eval_tf = default_transforms(data if stats is None else stats())
    student = create_model(model, num_classes=data.num_classes, in_channels=data.image_shape[0])
    if w_bits != FLOAT_BITS or a_bits != FLOAT_BITS:
        quantize_model(student, w_bits, a_bits, first_last=first_last)
    missing = load_checkpoint(student, checkpoint, allow_missing_quantizers=True)
    if missing:
        log.info("%s is a float checkpoint: calibrating W%dA%d step sizes on %s", checkpoint,
                 w_bits, a_bits, data.split)
        rows = spread_positions(len(data), 1024)  # a class-sorted folder gives every class
        calibrate_(student, (eval_tf(x) for _, x, _ in iter_batches(data, 256, rows)),
                   max_batches=4)
    ref_outputs = None
    if reference:
        ref_model = create_model(model, num_classes=data.num_classes,
                                 in_channels=data.image_shape[0])
        load_checkpoint(ref_model, reference)
        cache_dir = cache_dir or str(Path(out).resolve().parent / ".reference-cache")
        if rank == 0:
            ref_outputs, hit = cached_reference(ref_model, data, eval_tf, cache_dir=cache_dir,
                                                checkpoint_sha256=sha256_of(reference),
                                                batch_size=batch_size, device=device)
            log.info("reference outputs %s", "from the cache" if hit else "computed and cached")
        if world > 1:
            torch.distributed.barrier()
            if rank != 0:
                ref_outputs, _ = cached_reference(ref_model, data, eval_tf, cache_dir=cache_dir,
                                                  checkpoint_sha256=sha256_of(reference))
    return extract_scores(student, data, out, reference=ref_outputs, transform=eval_tf,
                          epoch=epoch, batch_size=batch_size, device=device,
                          shard_rows=shard_rows, embeddings=embeddings, probs=probs,
                          metadata={"arch": model, "checkpoint": str(checkpoint)},
                          overwrite=overwrite, rank=rank, world_size=world, bf16=bf16,
                          channels_last=channels_last)
