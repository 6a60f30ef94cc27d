"""Recipes: a YAML file (with ``base:`` chains) and ``--set KEY=VALUE`` overrides read into a
``TrainConfig``; the paths they name resolved against the recipe's folder; a run's
``config.json`` written with its paths absolute."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..common.atomic import write_text
from ..common.checks import first_line
from .config import TrainConfig

__all__ = ["load_recipe", "parse_assignments", "write_config", "PATH_KEYS", "resolve_path",
           "same_path", "yaml_mapping", "recipe_values"]


# keys that name files: relative paths in a recipe resolve against the recipe's folder
# (overrides on the command line, against the working directory)
PATH_KEYS = ("data", "teacher", "init", "labels", "exclude")
# data sources that are names, not paths
_NAMED_SOURCES = ("digits",)
_NAMED_PREFIXES = ("torchvision:", "hf:")


def resolve_path(key: str, value, folder: Path):
    """``value`` of path key ``key`` as written in a recipe in ``folder``: relative file
    paths (and the folder of ``imagefolder:PATH`` and ``coco:ROOT``) joined to ``folder``,
    made absolute, as is ``model_kwargs: {backbone_weights: FILE.pt}`` (a backbone's weights); names
    (``digits``, ``torchvision:NAME``) and absolute paths as they are.

    Args:
        key: the recipe key.
        value: its value.
        folder: the recipe's folder.

    Returns:
        The value, resolved where it is a path.
    """
    if key == "model_kwargs" and isinstance(value, dict) and \
            str(value.get("backbone_weights", "")).endswith(".pt"):  # a backbone's weights file
        return {**value, "backbone_weights": resolve_path(
            "init", str(value["backbone_weights"]), folder)}
    if key not in PATH_KEYS or not isinstance(value, str) or not value:
        return value
    if key == "data" and (value in _NAMED_SOURCES or value.startswith(_NAMED_PREFIXES)):
        return value
    prefix = ""
    for kind in ("imagefolder:", "coco:"):
        if key == "data" and value.startswith(kind):
            prefix, value = kind, value[len(kind):]
    value = os.path.expanduser(value)
    if not os.path.isabs(value):
        value = os.path.normpath(os.path.join(os.path.abspath(folder), value))
    return prefix + value


def same_path(key: str, a, b) -> bool:
    """Whether two values of a path key name the same file (relative ones against the
    working directory): a run saved with a working-directory-relative path resumes under
    a recipe that names it relative to itself.

    Args:
        key: the recipe key.
        a: one value.
        b: the other.

    Returns:
        True when both resolve to the same path (or are equal non-path values).
    """
    return resolve_path(key, a, Path.cwd()) == resolve_path(key, b, Path.cwd())


def load_recipe(path: str | os.PathLike | None, overrides: list[str] = ()) -> TrainConfig:
    """A ``TrainConfig`` from a YAML recipe and ``key=value`` overrides (values in YAML).

    A recipe may start from another with ``base: OTHER.yaml`` (relative to itself) and
    change only some keys. Relative paths in a recipe (``PATH_KEYS``: data, teacher,
    init, labels, exclude) are relative to the recipe's own folder, so a recipe runs from
    any working directory; paths given as overrides are relative to the working directory.

    Args:
        path: the YAML recipe, or None for the defaults.
        overrides: ``["key=value", ...]``, each value read as YAML.

    Returns:
        The ``TrainConfig``.

    Raises:
        FileNotFoundError: the recipe (or a ``base:`` it names) does not exist.
        ValueError: an unknown key, a bad value, a malformed override, or a recipe that
            is not a mapping or inherits from itself.
    """
    values: dict[str, Any] = {} if path is None else recipe_values(Path(path), [])
    values.update(parse_assignments(overrides, "--set"))
    return TrainConfig.from_dict(values)


def parse_assignments(items, flag: str) -> dict[str, Any]:
    """``["key=value", ...]`` as a dict, each value read as YAML (``0.3``, ``true``, ``[1, 2]``,
    or a plain string).

    Args:
        items: the assignments.
        flag: the command-line flag they came with, for error messages.

    Returns:
        ``{key: value}``.

    Raises:
        ValueError: an item is not ``KEY=VALUE`` or its value is not valid YAML.
    """
    import yaml

    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} takes KEY=VALUE; got {item!r}")
        try:
            values[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f"{flag} {item!r}: the value is not valid YAML "
                             f"({_yaml_problem(err)})") from err
    return values


def _yaml_problem(err) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own text spans several
    lines, with the offending line drawn under a caret)."""
    problem = getattr(err, "problem", None) or first_line(err)
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def yaml_mapping(path: Path, what: str = "recipe") -> dict:
    """The settings of a YAML file, checked to be there, valid YAML and a mapping.

    Args:
        path: the file.
        what: how it is named in errors (``recipe``, ``curate recipe``).

    Returns:
        Its settings (an empty file: none).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not valid YAML (one line: what and where), or not a mapping.
    """
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{what} {path} is not valid YAML: {_yaml_problem(err)}") from err
    if not isinstance(loaded, dict):
        raise ValueError(f"{what} {path} must be a YAML mapping of settings")
    return loaded


def recipe_values(path: Path, seen: list[Path]) -> dict:
    """A recipe's settings; ``base: FILE`` (relative to the recipe) inherits another's."""
    if path.resolve() in seen:
        raise ValueError(f"recipe {path} inherits from itself through 'base'")
    loaded = yaml_mapping(path)
    loaded = {k: resolve_path(k, v, path.parent) for k, v in loaded.items()}
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    return {**recipe_values(path.parent / str(base), [*seen, path.resolve()]), **loaded}


def write_config(config: TrainConfig, out: Path) -> None:
    """``out/config.yaml``: the run's settings as a recipe, its paths absolute (relative
    ones resolved against the working directory), so that it runs from anywhere.

    Args:
        config: the run's settings.
        out: the run folder.

    Returns:
        None; the file is written atomically.
    """
    import yaml

    values = {k: resolve_path(k, v, Path.cwd()) for k, v in asdict(config).items()}
    write_text(out / "config.yaml", yaml.safe_dump(values, sort_keys=False))
