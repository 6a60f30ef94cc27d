"""Loading a split by source name: Hugging Face datasets, Parquet files, torchvision,
image folders and scikit-learn's digits.

``load_data(source, split)`` accepts

* a Hugging Face ``datasets.Dataset`` or ``DatasetDict`` (one with an ``objects`` column of
  ``bbox`` and ``category`` is a detection dataset: ``detection.from_hf_detection``);
* a folder, a file or a glob of Hugging Face-layout Parquet files (for example
  ``../shared/data/cifar10``, whose files are named ``train-*.parquet`` / ``test-*.parquet``);
* ``"torchvision:NAME"`` (``CIFAR10``, ``CIFAR100``, ``MNIST``, ``FashionMNIST``, ...) read
  from ``root``, downloading only with ``download=True``;
* ``"coco:ROOT"``: a COCO-layout detection dataset (``detection.read_coco``; with
  ``stream=True`` its images are decoded when read);
* ``"digits"``: scikit-learn's 1,797 8x8 handwritten digits (ships with scikit-learn;
  split ``train`` = rows whose index is not a multiple of 5, ``test`` = the others,
  ``all`` = every row).

Every image is decoded once into an ``(N, C, H, W)`` uint8 tensor (CIFAR-10 train is
150 MB), so training and scoring never wait on per-sample decoding; transforms work on
whole batches.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.checks import InputTypeError
from .columns import find_column
from .decode import decode_image_column, to_nchw_uint8
from .memory import ImageData
from .sources import LoadOptions, find_source

__all__ = ["load_data", "parquet_dataset", "to_hf_dataset", "find_column"]

log = logging.getLogger(__name__)

def load_data(
    source: Any,
    split: str = "train",
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    root: str | os.PathLike | None = None,
    download: bool = False,
    num_threads: int | None = None,
    stream: bool = False,
    crop_size: int | None = None,
    resize_size: int | None = None,
    num_workers: int | None = None,
    labels=None,
):
    """Load one split of an image-classification dataset into memory (see module doc).

    ``labels``: a labels table (path or table: ``sample_id``, ``label``, optional
    ``true_label``) whose labels replace the dataset's, rows it leaves out on purpose
    dropped (see ``coreset_curate.labels.cleaning.apply_labels``).

    ``stream=True`` keeps the images encoded and returns a ``stream.StreamingImageData``
    that decodes them batch by batch, cropped to ``crop_size`` (default 224; eval view:
    shorter side resized to ``resize_size``, default ``crop_size / 0.875``, then the centre
    crop) in ``num_workers`` processes: for datasets of many or differently sized images
    (ImageNet). It takes a Hugging Face dataset, Parquet files or ``imagefolder:PATH``.

    Args:
        source: ``"digits"``, ``"torchvision:NAME"``, ``"hf:NAME"``,
            ``"imagefolder:PATH"``, a folder or glob of Parquet files, or a
            ``datasets.Dataset`` / ``DatasetDict``.
        split: the split to load.
        image_column: the image column (default: found by type or name).
        label_column: the label column (default: found by type or name).
        id_column: a column of sample ids (default: row positions).
        root: torchvision's data folder.
        download: let torchvision download into ``root``.
        num_threads: decoding threads.
        stream: decode batch by batch instead of into memory.
        crop_size: streamed crops' size.
        resize_size: streamed eval view's shorter side before the centre crop.
        num_workers: streamed decoding processes.
        labels: a labels table whose labels replace the dataset's.

    Returns:
        An ``ImageData`` (a ``StreamingImageData`` with ``stream=True``).

    Raises:
        FileNotFoundError: a path names no file, folder or Parquet split.
        TypeError: ``source`` is of a kind this function does not read.
        ValueError: an unknown split, dataset or column, an empty split, settings that
            apply only to streamed data, or a labels table that does not fit.
    """
    if labels is not None:
        from .labels import apply_labels

        data = load_data(source, split, image_column=image_column, label_column=label_column,
                         id_column=id_column, root=root, download=download,
                         num_threads=num_threads, stream=stream, crop_size=crop_size,
                         resize_size=resize_size, num_workers=num_workers)
        if getattr(data, "task", None) == "detection":
            raise ValueError("labels tables replace a classification dataset's labels; a "
                             "detection dataset's classes are in its annotations")
        return apply_labels(data, labels)
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string; got {split!r}")
    if not isinstance(stream, bool):
        raise ValueError(f"stream must be true or false; got {stream!r}")
    view = {"crop_size": 224 if crop_size is None else crop_size, "resize_size": resize_size,
            "num_workers": num_workers}
    if not stream and (crop_size is not None or resize_size is not None):
        raise ValueError("crop_size and resize_size apply to streamed datasets (stream=True); "
                         "in-memory datasets keep their images' size")
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        datasets = None
    if datasets is not None and isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise ValueError(f"split {split!r} not in the DatasetDict; it has {list(source)}")
        source = source[split]
    if datasets is not None and isinstance(source, datasets.Dataset) \
            and "objects" in source.features:  # a detection dataset: boxes per image
        from .coco_hf import from_hf_detection
        from .sources import box_options

        box_options(crop_size, resize_size, num_workers)
        return from_hf_detection(source, split, "hf:" + (source.info.dataset_name or "dataset"),
                                 id_column=id_column, image_column=image_column, stream=stream)
    if datasets is not None and isinstance(source, datasets.Dataset):
        return _from_hf(source, split, "hf:" + (source.info.dataset_name or "dataset"),
                        image_column, label_column, id_column, num_threads,
                        view if stream else None)
    if not isinstance(source, (str, os.PathLike)):
        raise InputTypeError("source must be a datasets.Dataset/DatasetDict, a path or glob "
                             "of Parquet files, 'torchvision:NAME' or 'digits'; got "
                             f"{type(source).__name__}")
    text = os.fspath(source)
    found = find_source(text)
    if found is not None:
        spec, arg = found
        if stream and not spec.streams:
            raise ValueError(f"stream=True takes a Hugging Face dataset, Parquet files or "
                             f"'imagefolder:PATH'; {text!r} is small enough to load into "
                             "memory")
        return spec.fn(arg, split, LoadOptions(
            image_column, label_column, id_column, root, download, num_threads, stream,
            crop_size, resize_size, num_workers, view if stream else None, text))
    ds = parquet_dataset(text, split)
    return _from_hf(ds, split, text, image_column, label_column, id_column, num_threads,
                    view if stream else None)


def parquet_dataset(source: str | os.PathLike, split: str = "train"):
    """The ``datasets.Dataset`` of one split of a folder, file or glob of Parquet files
    (nothing is decoded)."""
    import datasets

    return datasets.Dataset.from_parquet(_parquet_files(os.fspath(source), split), split=split)


def to_hf_dataset(data: ImageData):
    """``data`` as a ``datasets.Dataset`` with ``image`` (Image) and ``label`` (ClassLabel)
    columns, in row order: the source dataset itself when there is one."""
    import datasets

    if data.hf_dataset is not None:
        return data.hf_dataset
    if not hasattr(data, "images"):
        raise ValueError(f"{data.name!r} is streamed from an image folder: load it with "
                         "datasets.load_dataset('imagefolder', data_dir=...) to use it as a "
                         "datasets.Dataset")
    arr = data.images.permute(0, 2, 3, 1).numpy()
    images = [a[..., 0] if a.shape[-1] == 1 else a for a in arr]
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=list(data.class_names))})
    return datasets.Dataset.from_dict({"image": images, "label": data.labels.tolist()},
                                      features=features, split=data.split)


def _parquet_files(text: str, split: str) -> list[str]:
    path = Path(text)
    if any(ch in text for ch in "*?["):
        files = sorted(glob.glob(text))
    elif path.is_file():
        files = [str(path)]
    elif path.is_dir():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", split) or ".." in split:
            raise ValueError(f"split name {split!r} may hold only letters, digits, '.', '-' "
                             "and '_' (it names files inside the dataset folder)")
        files = []
        for pattern in (f"{split}-*.parquet", f"{split}.parquet", f"{split}/*.parquet",
                        f"*/{split}-*.parquet", f"*/{split}/*.parquet"):
            files = sorted(glob.glob(str(path / pattern)))
            if files:
                break
        if not files:
            present = sorted(p.name for p in path.glob("**/*.parquet"))[:10]
            raise FileNotFoundError(f"no Parquet file for split {split!r} in {text} (looked for "
                                    f"{split}-*.parquet, {split}.parquet, {split}/*.parquet); "
                                    f"found {present or 'no Parquet files'}")
    else:
        raise FileNotFoundError(f"data source {text!r} is not a file, a folder, a glob, "
                                "'torchvision:NAME' or 'digits'")
    if not files:
        raise FileNotFoundError(f"no file matches {text!r}")
    return files


def _from_hf(ds, split, name, image_column, label_column, id_column, num_threads, view):
    import datasets

    feats = ds.features
    image_column = find_column(feats, "image", image_column)
    label_column = find_column(feats, "label", label_column)
    if id_column is not None:
        find_column(feats, "id", id_column)
    labels = np.asarray(ds.with_format("numpy")[label_column], dtype=np.int64)
    feat = feats[label_column]
    if isinstance(feat, datasets.ClassLabel):
        class_names = list(feat.names)
    else:
        class_names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    ids = (np.asarray(ds.with_format("numpy")[id_column], dtype=np.int64) if id_column
           else np.arange(len(ds), dtype=np.int64))
    if len(ds) == 0:
        raise ValueError(f"dataset {name!r} split {split!r} is empty")
    if view is not None:
        from .stream import streaming_from_hf

        if not isinstance(feats[image_column], datasets.Image):
            raise ValueError(f"stream=True needs an Image column of encoded images; "
                             f"{image_column!r} is {feats[image_column]}")
        return streaming_from_hf(ds, split, name, image_column, labels, class_names, ids,
                                 **view)
    if isinstance(feats[image_column], datasets.Image):
        images = decode_image_column(ds, image_column, num_threads)
    else:
        arr = np.asarray(ds.with_format("numpy")[image_column])
        images = to_nchw_uint8(arr)
    return ImageData(images, torch.from_numpy(labels), ids, class_names, split, name, hf_dataset=ds)
