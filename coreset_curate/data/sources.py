"""Data sources by name: ``load_data("NAME:ARG", split)`` looks ``NAME`` up here.

Built in: ``coco:ROOT`` (COCO-layout detection data), ``imagefolder:ROOT``,
``torchvision:NAME`` and ``digits``; a path or glob of Parquet files, or a ``datasets``
object, needs no name. A new source registers itself:

    @register_source("mysource", argument=True)
    def my_source(arg: str, split: str, options: LoadOptions) -> ImageData: ...

after which ``load_data("mysource:ARG", "train")`` calls it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.registry import Registry
from .decode import decode_all, to_nchw_uint8
from .memory import ImageData

__all__ = ["SOURCES", "SourceSpec", "LoadOptions", "register_source", "find_source",
           "list_sources", "box_options"]

DIGITS_SPLITS = ("train", "test", "all")


@dataclass(frozen=True)
class SourceSpec:
    """A registered source: ``fn(arg, split, options)``; ``argument``: whether its name
    takes ``:ARG``; ``streams``: whether it reads with ``stream=True``."""

    fn: Callable[..., Any]
    argument: bool
    streams: bool


@dataclass(frozen=True)
class LoadOptions:
    """The keyword arguments of ``load_data`` a source may read."""

    image_column: str | None = None
    label_column: str | None = None
    id_column: str | None = None
    root: str | os.PathLike | None = None
    download: bool = False
    num_threads: int | None = None
    stream: bool = False
    crop_size: int | None = None
    resize_size: int | None = None
    num_workers: int | None = None
    view: dict | None = None  # the streamed view's settings (None: in memory)
    text: str = ""            # the whole source string, as the dataset's name


SOURCES: Registry = Registry(
    "data source", wrap=lambda fn, argument=True, streams=False: SourceSpec(fn, argument,
                                                                             streams))


def register_source(name: str, *, argument: bool = True, streams: bool = False) -> Callable:
    """Decorator that registers a data source ``fn(arg, split, options) -> dataset``.

    Args:
        name: what comes before ``:`` in the source string (or the whole string when
            ``argument`` is False).
        argument: whether the source takes ``NAME:ARG``.
        streams: whether it reads with ``stream=True`` (else that is refused).

    Returns:
        The decorator; it returns the function unchanged.

    Raises:
        ValueError: (when the decorator is applied) ``name`` is already registered.
    """
    return SOURCES.register(name, argument=argument, streams=streams)


def list_sources() -> list[str]:
    """Names of the registered data sources.

    Returns:
        The names, sorted.
    """
    return SOURCES.names()


def find_source(text: str) -> tuple[SourceSpec, str] | None:
    """(the source, its argument) a source string names, or None for a path."""
    name, colon, arg = text.partition(":")
    spec = SOURCES.get(name)
    if spec is None or spec.argument != bool(colon):
        return None
    return spec, arg


def box_options(crop_size, resize_size, num_workers) -> None:
    """Refuse the streamed-view settings for data with boxes."""
    if crop_size is not None or resize_size is not None or num_workers is not None:
        raise ValueError("crop_size, resize_size and num_workers apply to classification "
                         "images; a detector resizes its images itself (stream=True alone "
                         "decodes a detection split's images when they are read)")


@register_source("coco", argument=True, streams=True)
def _coco(root: str, split: str, o: LoadOptions):
    """``coco:ROOT``: a COCO-layout detection dataset, images with boxes (``coco.read_coco``;
    with ``stream=True`` its images are decoded when read)."""
    from .coco import read_coco

    box_options(o.crop_size, o.resize_size, o.num_workers)
    return read_coco(root, split, stream=o.stream)


@register_source("imagefolder", argument=True, streams=True)
def _image_folder(folder: str, split: str, o: LoadOptions) -> ImageData:
    """``imagefolder:ROOT``: the split is ``ROOT/SPLIT/CLASS/IMAGE`` files."""
    from .stream import image_folder_files, streaming_from_folder

    root = Path(folder) / split
    if o.view is not None:
        return streaming_from_folder(root, split, o.text, **o.view)
    paths, labels, classes = image_folder_files(root)
    images = decode_all(paths, o.num_threads)
    return ImageData(images, torch.from_numpy(labels), np.arange(len(paths), dtype=np.int64),
                     classes, split, o.text)


@register_source("digits", argument=False)
def _digits(_: str, split: str, o: LoadOptions) -> ImageData:
    """``digits``: scikit-learn's 1,797 8x8 handwritten digits (split ``train``: rows whose
    index is not a multiple of 5, ``test``: the others, ``all``: every row)."""
    from sklearn.datasets import load_digits

    if split not in DIGITS_SPLITS:
        raise ValueError(f"digits has splits {DIGITS_SPLITS}; got {split!r}")
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    labels = d.target.astype(np.int64)
    rows = np.arange(len(labels))
    keep = {"train": rows % 5 != 0, "test": rows % 5 == 0, "all": rows >= 0}[split]
    return ImageData(to_nchw_uint8(images[keep]), torch.from_numpy(labels[keep]),
                     np.arange(int(keep.sum()), dtype=np.int64),
                     [str(c) for c in d.target_names], split, "digits")


@register_source("torchvision", argument=True)
def _torchvision(name: str, split: str, o: LoadOptions) -> ImageData:
    """``torchvision:NAME``: a torchvision dataset read from ``root`` (downloading only with
    ``download=True``)."""
    import torchvision

    root, download = o.root, o.download

    cls = getattr(torchvision.datasets, name, None)
    if cls is None:
        raise ValueError(f"torchvision has no dataset {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"torchvision datasets here have splits 'train' and 'test'; got {split!r}")
    if root is None:
        raise ValueError("torchvision datasets need root= (a folder to read from or download to)")
    try:
        ds = cls(root=os.fspath(root), train=(split == "train"), download=download)
    except RuntimeError as err:
        raise FileNotFoundError(f"{name} not found under {root} ({err}); pass download=True "
                                "on a machine with internet") from err
    arr = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    labels = np.asarray(ds.targets, dtype=np.int64)
    classes = [str(c) for c in getattr(ds, "classes", range(int(labels.max()) + 1))]
    return ImageData(to_nchw_uint8(arr.astype(np.uint8)), torch.from_numpy(labels),
                     np.arange(len(labels), dtype=np.int64), classes, split,
                     f"torchvision:{name}")
