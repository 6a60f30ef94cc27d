"""Columns of a Hugging Face ``datasets`` feature dict: which one holds the images, the
labels or the ids."""

from __future__ import annotations

__all__ = ["find_column"]


def find_column(features, what: str, name: str | None) -> str:
    """The ``image`` or ``label`` column of a ``datasets`` feature dict (the first Image /
    ClassLabel feature, else a usual name), or ``name`` checked to exist."""
    import datasets

    if name is None and what in ("image", "label"):
        kind, usual = ((datasets.Image, ("img", "image")) if what == "image"
                       else (datasets.ClassLabel, ("label", "labels")))
        name = next((k for k, f in features.items() if isinstance(f, kind)), None)
        name = name or next((k for k in usual if k in features), None)
    if name is None or name not in features:
        raise ValueError(f"{what} column {name!r} not found; the dataset has columns "
                         f"{list(features)} (name it with {what}_column=)")
    return name
