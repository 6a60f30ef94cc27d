"""Datasets: loading by source name, in-memory and streamed splits, any torch Dataset,
and batched transforms.

``load_data(source, split)`` accepts a Hugging Face ``datasets.Dataset`` or
``DatasetDict``, a folder / file / glob of Hugging Face-layout Parquet, ``"torchvision:NAME"``,
``"imagefolder:ROOT"``, ``"coco:ROOT"`` and ``"digits"`` (``data.sources``: a new source
registers itself there); ``as_rows(dataset)`` wraps any
map-style torch ``Dataset`` so that scoring and selection read it like the others.
"""

from .adapter import DatasetRows, as_rows
from .columns import find_column
from .load import load_data, parquet_dataset, to_hf_dataset
from .memory import (FingerprintMismatch, ImageData, LabelledRows, check_fingerprint,
                     fingerprint, inference_batch_size, iter_batches, load_batches,
                     spread_positions)
from .sources import LoadOptions, list_sources, register_source
from .transforms import EvalTransform, TrainTransform, default_transforms

__all__ = [
    "ImageData", "LabelledRows", "DatasetRows", "as_rows", "load_data", "EvalTransform",
    "TrainTransform", "default_transforms", "fingerprint", "check_fingerprint",
    "FingerprintMismatch", "parquet_dataset", "to_hf_dataset", "find_column", "iter_batches",
    "load_batches", "inference_batch_size", "spread_positions", "register_source",
    "list_sources", "LoadOptions",
]
