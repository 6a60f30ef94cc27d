"""A detector checkpoint scored into a score table (what ``coreset-curate score`` runs on
``coco:ROOT`` data): one table by ``scores.score_detections``."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["score_detector"]


def score_detector(data, model: str, checkpoint, out, *, w_bits: int = 32, a_bits: int = 32,
                   first_last: str = "int8", reference=None, epoch: int = 0,
                   batch_size: int = 16, device=None, mean=None, std=None, stats=None,
                   shard_rows: int = 8192, embeddings: bool = False, probs: bool = False,
                   bf16: bool = False, channels_last: bool = False, cache_dir=None,
                   model_kwargs: dict | None = None, overwrite: bool = False) -> Path:
    """Score every image of ``data`` with the checkpoint of detector ``model``
    (``score_checkpoint`` documents the arguments); returns the table's path."""
    from ...common.checkpoint import load_checkpoint
    from ...common.tables import write_table
    from ...data import spread_positions
    from ...quant import FLOAT_BITS, calibrate_, quantize_model
    from .data import calibration_batches
    from .models import create_detector
    from .scores import score_detections

    unsupported = [flag for flag, on in (("--embeddings", embeddings), ("--probs", probs),
                                         ("--bf16", bf16), ("--mean/--std", mean or std)) if on]
    if unsupported:
        raise ValueError(f"{unsupported} apply to classifiers; a detection split is scored "
                         "by detection.score_detections (see its columns in the README)")
    kwargs = dict(model_kwargs or {})

    def build(path, quantized: bool):
        net = create_detector(model, num_classes=data.num_classes, **kwargs)
        if quantized:
            quantize_model(net, w_bits, a_bits, first_last=first_last)
        return net, load_checkpoint(net, path, allow_missing_quantizers=True)

    student, missing = build(checkpoint, w_bits != FLOAT_BITS or a_bits != FLOAT_BITS)
    if missing:
        log.info("%s is a float checkpoint: calibrating W%dA%d step sizes on %s", checkpoint,
                 w_bits, a_bits, data.split)
        calibrate_(student, calibration_batches(data, spread_positions(len(data), 64)))
    ref = build(reference, False)[0] if reference else None
    table = score_detections(student, data, ref, epoch=epoch, batch_size=batch_size or 16,
                             device=device,
                             metadata={"arch": model, "checkpoint": str(checkpoint)})
    write_table(table, out, overwrite=overwrite)
    return Path(out)
