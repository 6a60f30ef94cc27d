"""Label noise for experiments: symmetric and class-dependent flips, deterministic by seed.

    noise = inject_noise(data.labels, 0.2, "symmetric", seed=0)
    noisy_data = data.with_labels(noise.labels)      # train on these
    noise.flipped                                    # the truth, for scoring an audit

Symmetric noise flips exactly ``round(rate * n)`` samples, each to one of the other
classes uniformly (so the realised noise rate is the rate asked for). Asymmetric noise
flips ``round(rate * n_c)`` samples of every source class ``c`` of a class map to its
target (for CIFAR-10 the usual truck->automobile, bird->airplane, deer->horse,
cat<->dog); classes outside the map keep their labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..common.tables import make_metadata, with_metadata, write_table

__all__ = ["NOISE_TYPES", "CIFAR10_FLIPS", "LabelNoise", "inject_noise", "read_labels"]

NOISE_TYPES = ("symmetric", "asymmetric")
# class-dependent flips between look-alike CIFAR-10 classes (by class name)
CIFAR10_FLIPS = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog",
                 "dog": "cat"}

LABELS_SCHEMA = pa.schema([
    pa.field("sample_id", pa.int64(), nullable=False),
    pa.field("label", pa.int64(), nullable=False),
    pa.field("true_label", pa.int64(), nullable=False),
])


@dataclass
class LabelNoise:
    """Noisy labels with the true ones beside them (what ``inject_noise`` returns).

    Attributes:
        labels: the noisy labels (int64), in the order of the labels given.
        true_labels: the labels before the flips.
        noise_type: ``"symmetric"`` or ``"asymmetric"``.
        rate: the rate asked for.
        seed: the seed of the flips.
    """

    labels: np.ndarray  # the noisy labels (int64)
    true_labels: np.ndarray
    noise_type: str
    rate: float
    seed: int

    @property
    def flipped(self) -> np.ndarray:
        """Boolean mask of the samples whose label was changed."""
        return self.labels != self.true_labels

    @property
    def realised_rate(self) -> float:
        """The share of labels actually changed."""
        return float(self.flipped.mean()) if len(self.labels) else 0.0

    def table(self, sample_ids: np.ndarray | None = None, *,
              fingerprint: dict | None = None) -> pa.Table:
        """``sample_id, label, true_label`` as an Arrow labels table.

        Args:
            sample_ids: one id per label (default: positions).
            fingerprint: the dataset's fingerprint, stored in the metadata so that a
                later run can check it trains on the same data.

        Returns:
            The table, with the noise settings in its metadata.

        Raises:
            ValueError: ``sample_ids`` and the labels differ in length.
        """
        ids = np.arange(len(self.labels)) if sample_ids is None else np.asarray(sample_ids)
        if len(ids) != len(self.labels):
            raise ValueError(f"{len(ids)} sample ids for {len(self.labels)} labels")
        table = pa.table([pa.array(ids, pa.int64()), pa.array(self.labels, pa.int64()),
                          pa.array(self.true_labels, pa.int64())], schema=LABELS_SCHEMA)
        return with_metadata(table, make_metadata(
            kind="labels", noise_type=self.noise_type, rate=self.rate, seed=self.seed,
            realised_rate=self.realised_rate, fingerprint=fingerprint))

    def write(self, path: str | os.PathLike, sample_ids: np.ndarray | None = None, *,
              fingerprint: dict | None = None, overwrite: bool = False):
        """Write ``table(sample_ids, fingerprint=...)`` to ``path`` (atomically).

        Args:
            path: the Parquet file to write.
            sample_ids: as for ``table``.
            fingerprint: as for ``table``.
            overwrite: replace an existing file.

        Returns:
            The path written.

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False.
        """
        return write_table(self.table(sample_ids, fingerprint=fingerprint), path,
                           overwrite=overwrite)


def _flip_map(flips, class_names, num_classes) -> dict[int, int]:
    if flips is None:
        names = list(class_names or [])
        if set(CIFAR10_FLIPS) | set(CIFAR10_FLIPS.values()) <= set(names):
            flips = {names.index(a): names.index(b) for a, b in CIFAR10_FLIPS.items()}
        else:
            raise ValueError("asymmetric noise needs a class map (flips={source: target}); "
                             "a default exists only for CIFAR-10's class names")
    if not isinstance(flips, Mapping) or not flips:
        raise ValueError(f"flips must be a non-empty mapping source -> target; got {flips!r}")
    names = list(class_names or [])
    out = {}
    for a, b in flips.items():
        ia = names.index(a) if isinstance(a, str) and a in names else a
        ib = names.index(b) if isinstance(b, str) and b in names else b
        for v, orig in ((ia, a), (ib, b)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) \
                    or not 0 <= v < num_classes:
                raise ValueError(f"flip class {orig!r} is not a class index in [0, "
                                 f"{num_classes}) or a class name")
        if ia == ib:
            raise ValueError(f"flip {a!r} -> {b!r} maps a class to itself")
        out[int(ia)] = int(ib)
    return out


def inject_noise(labels, rate: float, noise_type: str = "symmetric", *, seed: int = 0,
                 num_classes: int | None = None, flips: Mapping | None = None,
                 class_names: Sequence[str] | None = None) -> LabelNoise:
    """Flip labels at ``rate`` (see module doc); the same arguments give the same flips.

    Args:
        labels: 1-D integer class indices (for example ``data.labels``).
        rate: share of the labels (symmetric) or of each mapped source class
            (asymmetric) to flip, in [0, 1].
        noise_type: ``"symmetric"`` (to any other class, uniformly) or
            ``"asymmetric"`` (source class to its target in ``flips``).
        seed: seed of the flips.
        num_classes: the number of classes (default: from ``class_names`` or the labels).
        flips: asymmetric class map ``{source: target}`` by index or class name
            (default: ``CIFAR10_FLIPS`` when ``class_names`` are CIFAR-10's).
        class_names: names of the classes, to read ``flips`` given by name.

    Returns:
        A ``LabelNoise`` with the noisy and the true labels.

    Raises:
        ValueError: the labels are not 1-D non-negative integers, an argument is out of
            range (``noise_type``, ``rate``, ``seed``, fewer than 2 classes), or the class
            map is missing or names an unknown class.
    """
    true = np.asarray(labels)
    if true.ndim != 1 or (len(true) and true.dtype.kind not in "iu"):
        raise ValueError("labels must be a 1-D array of integer class indices")
    true = true.astype(np.int64)
    if len(true) and true.min() < 0:
        raise ValueError("labels must be non-negative class indices")
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"noise_type must be one of {NOISE_TYPES}; got {noise_type!r}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ValueError(f"rate must be a number in [0, 1]; got {rate!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    k = int(num_classes if num_classes is not None else
            (len(class_names) if class_names else (true.max() + 1 if len(true) else 0)))
    if len(true) and true.max() >= k:
        raise ValueError(f"labels go up to {int(true.max())} but there are {k} classes")
    rng = np.random.default_rng([int(seed), 0xC0FFEE])
    noisy = true.copy()
    if noise_type == "symmetric":
        if k < 2:
            raise ValueError("symmetric noise needs at least 2 classes")
        chosen = rng.permutation(len(true))[: int(round(rate * len(true)))]
        noisy[chosen] = (true[chosen] + rng.integers(1, k, size=len(chosen))) % k
    else:
        for src, dst in sorted(_flip_map(flips, class_names, k).items()):
            members = np.flatnonzero(true == src)
            chosen = rng.permutation(members)[: int(round(rate * len(members)))]
            noisy[chosen] = dst
    return LabelNoise(noisy, true, noise_type, float(rate), int(seed))


def read_labels(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Read a labels table that holds the true labels.

    Args:
        path: a labels table (from the ``noise`` command, ``LabelNoise.write``, or
            ``labels.parquet`` in a run trained with ``label_noise``).

    Returns:
        ``(sample_id, label, true_label, metadata)``, sorted by sample_id.

    Raises:
        ValueError: the table lacks ``true_label`` (a cleaned labels table, say), or a
            column is missing, has missing values or repeats a sample id.
    """
    from .cleaning import read_labels_table

    table = read_labels_table(path)  # its checks: columns, missing values, duplicate ids
    if table.true_labels is None:
        raise ValueError(f"{path} is not a labels table with true labels: it lacks "
                         "['true_label']")
    return table.sample_ids, table.labels, table.true_labels, table.metadata
