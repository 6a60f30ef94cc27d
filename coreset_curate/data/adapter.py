"""Any map-style torch ``Dataset`` (or the dataset of a ``DataLoader``) as rows that the
toolkit scores and selects from, like an in-memory or streamed split.

    rows = as_rows(my_dataset)            # items (x, y), or (sample_id, x, y)
    rows.labels, rows.sample_ids, rows.fingerprint

Items go through the dataset's own transforms: scoring, the reference and evaluation take
the tensors as the dataset returns them (``IdentityTransform``), so a dataset meant for
scoring should return its deterministic view. Batches are collated by a ``DataLoader``
(the given loader's ``collate_fn`` and ``num_workers``); a ``TensorDataset`` is indexed
directly. Labels come from ``labels=``, else the dataset's ``targets`` (torchvision), else
its second tensor (``TensorDataset``), else one pass over the dataset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..common.checks import InputTypeError, is_int, non_negative_int, positive_int
from .memory import LabelledRows

__all__ = ["DatasetRows", "as_rows", "IdentityTransform"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdentityTransform:
    """The transform of a ``DatasetRows``: the dataset's items are used as they come."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x

    def to_dict(self) -> dict:
        return {"kind": "dataset"}


def _split_item(item, where: str):
    """(sample_id or None, x, y) of one item or one collated batch."""
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        size = f" of length {len(item)}" if isinstance(item, (tuple, list)) else ""
        raise InputTypeError(f"{where} must be (x, y) or (sample_id, x, y); got "
                             f"{type(item).__name__}{size}")
    return (None, *item) if len(item) == 2 else tuple(item)


class DatasetRows(LabelledRows):
    """Rows of a map-style torch ``Dataset``; ``rows[i]`` is the dataset index of row i."""

    transformed = True  # the dataset applies its own transforms

    def __init__(self, dataset: Dataset, *, labels=None, sample_ids=None, class_names=None,
                 num_classes: int | None = None, split: str = "train", rows=None,
                 batch_size: int = 256, num_workers: int = 0, collate_fn=None) -> None:
        if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset,
                                                                                 "__getitem__"):
            raise InputTypeError("scoring needs a map-style torch Dataset (with __getitem__ and "
                                 f"__len__); got {type(dataset).__name__}")
        self.dataset = dataset
        self.batch_size = positive_int("batch_size", batch_size)
        self.num_workers = non_negative_int("num_workers", num_workers)
        self.collate_fn = collate_fn
        self.split = str(split)
        self.name = type(dataset).__name__
        n = len(dataset)
        if n == 0:
            raise ValueError(f"dataset {self.name!r} is empty")
        self.rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        if labels is None or (sample_ids is None and self._has_ids()):
            found_ids, found = self._read_labels()
            labels = found if labels is None else labels
            sample_ids = found_ids if sample_ids is None else sample_ids
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.sample_ids = (np.arange(len(self.rows), dtype=np.int64) if sample_ids is None
                           else np.asarray(sample_ids, dtype=np.int64))
        if class_names is None:
            class_names = getattr(dataset, "classes", None)
        if class_names is None:
            k = int(self.labels.max()) + 1 if len(self.labels) else 0
            if num_classes is not None:
                k = positive_int("num_classes", num_classes)
            class_names = [str(c) for c in range(k)]
        self.class_names = [str(c) for c in class_names]
        self._check_rows(len(self.rows))

    def _has_ids(self) -> bool:
        if isinstance(self.dataset, TensorDataset):
            return len(self.dataset.tensors) == 3
        return _split_item(self.dataset[int(self.rows[0])], "a dataset item")[0] is not None

    def _read_labels(self) -> tuple[np.ndarray | None, np.ndarray]:
        ds = self.dataset
        if isinstance(ds, TensorDataset):
            ids = ds.tensors[0].numpy() if len(ds.tensors) == 3 else None
            labels = ds.tensors[-1].numpy()
            return (None if ids is None else ids[self.rows]), labels[self.rows]
        targets = getattr(ds, "targets", None)
        if targets is not None and not self._has_ids():
            return None, np.asarray(targets, dtype=np.int64)[self.rows]
        log.info("reading the labels of %s: one pass over its %d items (pass labels= to "
                 "skip it)", self.name, len(self.rows))
        ids, labels = [], []
        for sid, _, y in self._batches([self.rows[i:i + self.batch_size]
                                        for i in range(0, len(self.rows), self.batch_size)]):
            labels.append(torch.as_tensor(y).reshape(-1))
            if sid is not None:
                ids.append(torch.as_tensor(sid).reshape(-1))
        return (torch.cat(ids).numpy() if ids else None), torch.cat(labels).numpy()

    def _batches(self, batches: list):
        """(sample ids or None, x, y) of each list of dataset indices in ``batches``."""
        ds = self.dataset
        if isinstance(ds, TensorDataset):
            for b in batches:
                idx = torch.as_tensor(np.asarray(b, dtype=np.int64))
                yield _split_item(tuple(t[idx] for t in ds.tensors), "a TensorDataset")
            return
        kwargs = {} if self.collate_fn is None else {"collate_fn": self.collate_fn}
        loader = DataLoader(ds, batch_sampler=[np.asarray(b).tolist() for b in batches],
                            num_workers=self.num_workers, **kwargs)
        for batch in loader:
            yield _split_item(batch, "a collated batch")

    @property
    def image_shape(self) -> tuple[int, ...]:
        _, x, _ = _split_item(self.dataset[int(self.rows[0])], "a dataset item")
        return tuple(torch.as_tensor(x).shape)

    def decode_batches(self, batches: list, view: str = "eval", seed: int = 0):
        """Yield (positions, x, labels) for each array of positions; ``view`` and ``seed``
        are the dataset's own business (its transforms)."""
        batches = [np.asarray(b, dtype=np.int64) for b in batches]
        for pos, (_, x, _) in zip(batches, self._batches([self.rows[b] for b in batches])):
            p = torch.as_tensor(pos)
            if not isinstance(x, torch.Tensor):
                raise InputTypeError(f"{self.name} items must hold tensors; got {type(x).__name__}")
            yield p, x, self.labels[p]

    def subset(self, positions, split: str | None = None) -> DatasetRows:
        pos = np.asarray(positions, dtype=np.int64)
        return DatasetRows(self.dataset, labels=self.labels[torch.as_tensor(pos)],
                           sample_ids=self.sample_ids[pos], class_names=self.class_names,
                           split=split or self.split, rows=self.rows[pos],
                           batch_size=self.batch_size, num_workers=self.num_workers,
                           collate_fn=self.collate_fn)

    def with_labels(self, labels) -> DatasetRows:
        return DatasetRows(self.dataset, labels=labels, sample_ids=self.sample_ids,
                           class_names=self.class_names, split=self.split, rows=self.rows,
                           batch_size=self.batch_size, num_workers=self.num_workers,
                           collate_fn=self.collate_fn)


def as_rows(data, **kwargs) -> LabelledRows:
    """``data`` as rows the toolkit reads.

    Args:
        data: a toolkit dataset (returned as it is), a map-style torch ``Dataset``, or a
            ``DataLoader`` (its dataset, batch size, workers and collate function).
        **kwargs: passed to ``DatasetRows`` (``labels``, ``sample_ids``,
            ``class_names``, ``num_classes``, ``split``, ``batch_size``, ...).

    Returns:
        The rows: the toolkit dataset, or a ``DatasetRows`` around the torch dataset.

    Raises:
        TypeError: ``data`` is none of the above (an iterable-style dataset, say).
    """
    if isinstance(data, LabelledRows) or getattr(data, "task", None) == "detection":
        return data
    if isinstance(data, DataLoader):
        kwargs.setdefault("num_workers", data.num_workers)
        kwargs.setdefault("collate_fn", data.collate_fn)
        if is_int(data.batch_size):
            kwargs.setdefault("batch_size", data.batch_size)
        data = data.dataset
    if isinstance(data, Dataset) or hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return DatasetRows(data, **kwargs)
    raise InputTypeError("expected a dataset of this toolkit (load_data), a map-style torch "
                         f"Dataset or a DataLoader; got {type(data).__name__}")
