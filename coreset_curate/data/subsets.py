"""Hugging Face ``datasets`` side of an index: the subset of an epoch as a ``Dataset``,
and export of that subset (images included) as Parquet that ``load_dataset`` reads back
with the same features.

    import datasets
    from coreset_curate.data.subsets import load_subset
    ds = datasets.load_dataset("parquet", data_files={"train": "cifar10/train-*.parquet"},
                               split="train")
    subset = load_subset(ds, "index.parquet", epoch=3)      # Dataset.select of its ids
    index = datasets.load_dataset("parquet", data_files="index.parquet", split="train")
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .columns import find_column
from .load import parquet_dataset, to_hf_dataset
from .memory import LabelledRows, check_fingerprint, fingerprint
from ..common.atomic import atomic_path
from ..common.checks import InputTypeError, UnknownIds, align
from ..common.index import epoch_rows, read_index
from ..common.tables import table_metadata


__all__ = ["read_index", "epoch_rows", "load_subset", "export_subset", "dataset_fingerprint"]


def dataset_fingerprint(ds, split: str = "train", *, label_column: str | None = None,
                        id_column: str | None = None) -> dict:
    """The fingerprint of a ``datasets.Dataset`` (reads the label and id columns only)."""
    labels = np.asarray(ds.with_format("numpy")[find_column(ds.features, "label", label_column)],
                        np.int64)
    ids = (np.asarray(ds.with_format("numpy")[id_column], np.int64) if id_column
           else np.arange(len(ds), dtype=np.int64))
    return fingerprint(labels, split, ids)


def _detection_source(dataset, split: str):
    """A ``DetectionData`` or ``coco:ROOT`` (read without decoding) as a ``DetectionData``;
    None for anything else."""
    if getattr(dataset, "task", None) == "detection":
        return dataset
    if isinstance(dataset, str) and dataset.startswith("coco:"):
        from .coco import read_coco

        return read_coco(dataset.split(":", 1)[1], split, stream=True)
    return None


def _as_hf(dataset, split: str):
    if isinstance(dataset, LabelledRows):  # ImageData, or a streamed dataset
        return to_hf_dataset(dataset)
    if isinstance(dataset, (str, os.PathLike)):
        if os.fspath(dataset) == "digits":
            from .load import load_data

            return to_hf_dataset(load_data("digits", split))
        return parquet_dataset(dataset, split)
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"split {split!r} not in the DatasetDict; it has {list(dataset)}")
        return dataset[split]
    if isinstance(dataset, datasets.Dataset):
        return dataset
    raise InputTypeError("dataset must be a datasets.Dataset/DatasetDict, an ImageData, "
                         "'digits' or a path of Parquet files; got "
                         f"{type(dataset).__name__}")


def load_subset(dataset, index, epoch: int, *, split: str = "train",
                label_column: str | None = None, id_column: str | None = None,
                with_weights: bool = False, check: bool = True, labels=None):
    """The ``datasets.Dataset`` of the samples of ``epoch`` in ``index``.

    The index's dataset fingerprint is checked first, so an index of another dataset
    fails with a clear error instead of selecting the wrong rows.

    Args:
        dataset: a ``datasets.Dataset`` (or ``DatasetDict`` with ``split``), an
            ``ImageData``, ``"digits"`` or a path of Parquet files; for detection, a
            ``DetectionData``, ``"coco:ROOT"`` or a Hugging Face detection dataset (rows
            keyed by ``image_id``, in the Hub's layout: ``detection.to_hf_detection``).
        index: the index (path or table).
        epoch: the epoch whose subset to return.
        split: the split of a ``DatasetDict`` or of Parquet files.
        label_column: the label column (default: found by type or name).
        id_column: a column of sample ids (default: row positions).
        with_weights: add the index's ``weight`` column.
        check: check the fingerprint (False skips it).
        labels: the labels table the run was trained with (``labels`` recipe key): the
            rows come with its labels, and the fingerprint checked is that of the data
            read with it.

    Returns:
        A ``datasets.Dataset`` of the subset's rows in ascending sample_id order.

    Raises:
        FingerprintMismatch: the index was made from another dataset.
        UnknownIds: the index names ids the dataset lacks.
        ValueError: the epoch is not in the index, an unknown split or column.
        TypeError: ``dataset`` is of a kind this function does not read.
    """
    det = _detection_source(dataset, split)
    if det is not None:
        from .coco_hf import to_hf_detection

        ds = to_hf_detection(det)
    else:
        ds = _as_hf(dataset, split)
    table = read_index(index)
    ids, weights = epoch_rows(table, epoch)
    actual = None
    if "objects" in ds.features:  # a detection dataset: keyed by image_id, no label column
        from .coco_hf import from_hf_detection

        if labels is not None:
            raise ValueError("labels tables replace a classification dataset's labels; a "
                             "detection dataset's classes are in its annotations")
        if id_column is None and "image_id" in ds.features:
            id_column = "image_id"
        if check:  # a Hub dataset is read back for its fingerprint; ours have one
            actual = (det if det is not None else from_hf_detection(
                ds, split, "hf", id_column=id_column, stream=True)).fingerprint
    if labels is not None:
        ds, actual = _with_labels(ds, split, labels, label_column, id_column)
    if check:
        expected = table_metadata(table).get("fingerprint")
        if expected is not None:
            check_fingerprint(expected, actual or dataset_fingerprint(
                ds, split, label_column=label_column, id_column=id_column), "index")
    if id_column is not None:
        all_ids = np.asarray(ds.with_format("numpy")[id_column], np.int64)
        order = np.argsort(all_ids, kind="stable")
        pos, found = align(all_ids[order], ids)
        if not found.all():
            raise UnknownIds(f"{int((~found).sum())} sample ids of the index are not in the "
                           f"dataset's {id_column!r} column")
        positions = order[pos]
    else:
        if len(ids) and (ids.min() < 0 or ids.max() >= len(ds)):
            raise UnknownIds(f"index sample ids reach {int(ids.max())} but the dataset has "
                           f"{len(ds)} rows")
        positions = ids
    subset = ds.select(positions)
    if with_weights:
        subset = subset.add_column("weight", weights.astype(np.float32).tolist())
    return subset


def _with_labels(ds, split: str, labels, label_column: str | None, id_column: str | None):
    """(``ds`` with a labels table's labels in its label column, the fingerprint of the
    data read with it). Rows the table leaves out keep their place (and old label), so row
    positions stay sample ids; the fingerprint covers only the rows kept."""
    from .memory import fingerprint as fingerprint_of
    from .labels import label_rows

    column = find_column(ds.features, "label", label_column)
    ids = (np.asarray(ds.with_format("numpy")[id_column], np.int64) if id_column
           else np.arange(len(ds), dtype=np.int64))
    feat = ds.features[column]
    old = np.asarray(ds.with_format("numpy")[column], np.int64)
    k = len(feat.names) if hasattr(feat, "names") else int(old.max()) + 1
    keep, new = label_rows(ids, k, labels, fingerprint=fingerprint_of(old, split, ids),
                           where=f"on the dataset's split {split!r}")
    full = old.copy()
    full[keep] = new
    names = ds.column_names
    ds = ds.remove_columns(column).add_column(column, full.tolist())
    return (ds.cast_column(column, feat).select_columns(names),
            fingerprint_of(new, split, ids[keep]))


def export_subset(dataset, index, epoch: int, out_dir: str | os.PathLike, *,
                  split: str = "train", label_column: str | None = None,
                  id_column: str | None = None, overwrite: bool = False,
                  labels=None) -> Path:
    """Write the rows of ``epoch`` (images included) to ``out_dir/SPLIT-00000-of-00001.parquet``
    with the dataset's features, so that ``datasets.load_dataset("parquet",
    data_dir=out_dir)`` reads them back. Written to a temporary file, then renamed.

    Args:
        dataset: as for ``load_subset``.
        index: as for ``load_subset``.
        epoch: as for ``load_subset``.
        out_dir: the folder to write to (created if missing).
        split: the split's name, also the file's prefix.
        label_column: as for ``load_subset``.
        id_column: as for ``load_subset``.
        overwrite: replace an existing file.
        labels: as for ``load_subset``.

    Returns:
        The path of the Parquet file written.

    Raises:
        FileExistsError: the file exists and ``overwrite`` is False.
        PermissionError: ``out_dir`` cannot be created.
        ValueError: the split name holds other characters than letters, digits, ``-``
            and ``_``, or what ``load_subset`` raises.
    """
    subset = load_subset(dataset, index, epoch, split=split, label_column=label_column,
                         id_column=id_column, labels=labels)
    if not split.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"split name {split!r} may hold only letters, digits, '-' and '_'")
    out_dir = Path(out_dir)
    target = out_dir / f"{split}-00000-of-00001.parquet"
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"cannot create the output folder {out_dir}: {err}") from err
    if "objects" in subset.features:  # a COCO split's images are files: put them inside
        from datasets.table import embed_table_storage

        subset = subset.with_format("arrow").map(embed_table_storage, batched=True
                                                 ).with_format(None)
    with atomic_path(target) as tmp:
        subset.to_parquet(str(tmp))
    return target
