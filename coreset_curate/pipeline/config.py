"""The settings of a ``curate`` run: ``CurateConfig`` and the curate recipe that holds
them (``load_curate_recipe``)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["STAGES", "CLEAN_MODES", "CurateConfig", "load_curate_recipe"]

STAGES = ("teacher", "audit", "clean", "teacher_clean", "student", "final_audit")
CLEAN_MODES = ("exclude", "relabel")
# keys that set the training labels: the pipeline replaces them with its cleaned table
_LABEL_KEYS = ("labels", "label_noise")


def _clean_kinds() -> tuple:
    from ..labels.cleaning import CLEAN_KINDS

    return CLEAN_KINDS


@dataclass
class CurateConfig:
    """The settings of one ``curate`` run; a curate recipe is a YAML file of these keys.

    Attributes:
        teacher: the full-precision teacher's recipe (a ``train`` recipe, ``mode: fp``).
        student: the quantized student's recipe (``mode: qat``); its ``teacher``, labels
            and ``score_final`` are set by the pipeline.
        common: recipe keys set in both (``data``, ``labels`` or ``label_noise``: the
            training labels, ``limit_train``, ``seed``, ...).
        teacher_set: recipe keys set in the teachers only (``epochs``, ...).
        student_set: recipe keys set in the student only (``method``, ``fraction``, ...).
        clean: ``"exclude"`` (flagged samples left out) or ``"relabel"`` (given the
            audit's suggested label; left out where it suggests none).
        kinds: the flag kinds cleaning acts on (default those of ``clean``: mislabeled,
            unknown).
        retrain_teacher: train the teacher again on the cleaned labels.
        final_audit: audit the student's finished model.
        folder: the folder relative paths in the recipe are read against (set by
            ``load_curate_recipe``; default the working directory).

    Raises:
        ValueError: an unknown ``clean`` mode or flag kind, or a setting of the wrong
            kind.
    """

    teacher: str
    student: str
    common: dict = field(default_factory=dict)
    teacher_set: dict = field(default_factory=dict)
    student_set: dict = field(default_factory=dict)
    clean: str = "exclude"
    kinds: list = field(default_factory=lambda: list(_clean_kinds()))
    retrain_teacher: bool = True
    final_audit: bool = True
    folder: str = "."

    def __post_init__(self) -> None:
        from ..labels.audit import KINDS

        for name in ("teacher", "student"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be the path of a train recipe; got "
                                 f"{getattr(self, name)!r}")
        for name in ("common", "teacher_set", "student_set"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a mapping of recipe keys; got "
                                 f"{getattr(self, name)!r}")
        if self.clean not in CLEAN_MODES:
            raise ValueError(f"clean must be one of {CLEAN_MODES}; got {self.clean!r}")
        kinds = list(self.kinds) if isinstance(self.kinds, (list, tuple)) else None
        if not kinds or any(k not in KINDS for k in kinds):
            raise ValueError(f"kinds must be a non-empty list of {KINDS}; got {self.kinds!r}")
        for name in ("retrain_teacher", "final_audit"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false; got {getattr(self, name)!r}")
        both = [k for k in _LABEL_KEYS if k in self.common]
        if len(both) > 1:
            raise ValueError("common sets both labels and label_noise: use one")
        for name in ("teacher_set", "student_set"):
            clash = [k for k in _LABEL_KEYS if k in getattr(self, name)]
            if clash:
                raise ValueError(f"{name} sets {clash}: the training labels go in common "
                                 "(the pipeline trains the teacher again on its cleaned ones)")

    def recipe_path(self, which: str) -> Path:
        """The teacher's or the student's recipe file, resolved against ``folder``."""
        path = Path(os.path.expanduser(getattr(self, which)))
        return path if path.is_absolute() else Path(self.folder) / path


def load_curate_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> CurateConfig:
    """A ``CurateConfig`` from a YAML curate recipe and ``key=value`` overrides.

    Relative paths in the recipe (its ``teacher`` and ``student`` recipes, and path keys in
    ``common``) are relative to the recipe's folder.

    Args:
        path: the curate recipe.
        overrides: ``["key=value", ...]``, each value read as YAML (for example
            ``'common={data: digits, limit_train: 500}'``).

    Returns:
        The config.

    Raises:
        FileNotFoundError: the recipe does not exist.
        ValueError: it is not valid YAML, not a mapping, has unknown keys or bad values.
    """
    from ..training.recipe import parse_assignments, resolve_path, yaml_mapping

    path = Path(path)
    values = yaml_mapping(path, "curate recipe")
    folder = path.parent.resolve()
    for key in ("common", "teacher_set", "student_set"):
        if isinstance(values.get(key), dict):
            values[key] = {k: resolve_path(k, v, folder) for k, v in values[key].items()}
    values.update(parse_assignments(overrides, "--set"))
    known = {f.name for f in dataclasses.fields(CurateConfig)} - {"folder"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown curate key(s) {unknown}; accepted keys: {sorted(known)}")
    missing = [k for k in ("teacher", "student") if k not in values]
    if missing:
        raise ValueError(f"curate recipe {path} lacks {missing}: the train recipes of the "
                         "teacher and the student")
    return CurateConfig(**values, folder=str(folder))
