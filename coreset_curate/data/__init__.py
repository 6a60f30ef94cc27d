"""Datasets: loading by source name, in-memory and streamed splits, any torch Dataset,
and batched transforms.

``load_data(source, split)`` accepts a Hugging Face ``datasets.Dataset`` or
``DatasetDict``, a folder / file / glob of Hugging Face-layout Parquet, ``"torchvision:NAME"``,
``"imagefolder:ROOT"``, ``"coco:ROOT"`` and ``"digits"`` (``data.sources``: a new source
registers itself there); ``as_rows(dataset)`` wraps any
map-style torch ``Dataset`` so that scoring and selection read it like the others.
"""

from importlib import import_module

# public name -> module; imported on first use, so that the torch-free parts (labels
# tables, fingerprints) load without torch
_EXPORTS = {
    "DatasetRows": "adapter", "as_rows": "adapter", "find_column": "columns",
    "load_data": "load", "parquet_dataset": "load", "to_hf_dataset": "load",
    "FingerprintMismatch": "memory", "ImageData": "memory", "LabelledRows": "memory",
    "check_fingerprint": "memory", "fingerprint": "memory",
    "inference_batch_size": "memory", "iter_batches": "memory", "load_batches": "memory",
    "spread_positions": "memory", "LoadOptions": "sources", "list_sources": "sources",
    "register_source": "sources", "EvalTransform": "transforms",
    "TrainTransform": "transforms", "default_transforms": "transforms",
}

__all__ = [
    "ImageData", "LabelledRows", "DatasetRows", "as_rows", "load_data", "EvalTransform",
    "TrainTransform", "default_transforms", "fingerprint", "check_fingerprint",
    "FingerprintMismatch", "parquet_dataset", "to_hf_dataset", "find_column", "iter_batches",
    "load_batches", "inference_batch_size", "spread_positions", "register_source",
    "list_sources", "LoadOptions",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
