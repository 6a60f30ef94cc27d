"""Dataset fingerprints: split name, length and hashes of the labels and ids, which tie a
table (scores, labels, an index) to the samples it was made from. Free of torch, so that
reading and selecting from score tables never loads it."""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["FingerprintMismatch", "fingerprint", "check_fingerprint"]


class FingerprintMismatch(ValueError):
    """A table was made from another dataset than the one it is joined to."""


def fingerprint(labels: np.ndarray, split: str, sample_ids: np.ndarray | None = None) -> dict:
    """Split name, length and sha256 of the labels (int64, in row order) and of the ids."""
    labels = np.ascontiguousarray(np.asarray(labels, dtype=np.int64))
    fp = {
        "split": str(split),
        "length": int(labels.shape[0]),
        "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
    }
    if sample_ids is not None:
        ids = np.ascontiguousarray(np.asarray(sample_ids, dtype=np.int64))
        fp["ids_sha256"] = hashlib.sha256(ids.tobytes()).hexdigest()
    return fp


def check_fingerprint(expected: dict, actual: dict, what: str = "table") -> None:
    """Raise ``FingerprintMismatch`` unless two fingerprints describe the same samples.

    Length, labels and (when both carry them) ids and annotations' hashes must agree; the
    split name is only informative, since one dataset may be loaded under several names.
    """
    for key in ("length", "labels_sha256", "ids_sha256", "annotations_sha256"):
        if key in expected and key in actual and expected[key] != actual[key]:
            raise FingerprintMismatch(
                f"{what} was made from another dataset: its {key} is {expected[key]!r} but the "
                f"dataset's is {actual[key]!r} (table split {expected.get('split')!r}, "
                f"dataset split {actual.get('split')!r})"
            )
