"""Checkpoints: weights-only loading with errors that say what is wrong, atomic saving,
file digests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from .atomic import atomic_path
from .checks import first_line

__all__ = ["sha256_of", "load_state", "load_checkpoint", "save_atomic"]


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 1 MiB blocks.

    Args:
        path: the file.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_state(path: str | os.PathLike) -> dict:
    """A checkpoint's tensors, loaded without running any code (weights_only).

    Args:
        path: the checkpoint.

    Returns:
        What the file holds (a state dict, or a dict of them), on CPU.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is corrupt or needs pickled code to load.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - unpickling refused or corrupt file
        raise ValueError(f"{path} is not a weights-only checkpoint this toolkit can load: "
                         f"{first_line(err)}") from err
    return state


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, *,
                    allow_missing_quantizers: bool = False) -> list[str]:
    """Load a weights-only state dict into ``model`` with errors that say what is wrong.

    Args:
        model: the model to load into.
        path: a weights-only checkpoint holding a state dict.
        allow_missing_quantizers: let a float checkpoint load into a quantized model.

    Returns:
        The quantizer entries the checkpoint lacked (calibrate those); ``[]`` without
        ``allow_missing_quantizers``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a weights-only state dict, or it does not fit the
            model (missing or unexpected keys, other shapes).
    """
    state = load_state(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    try:
        result = model.load_state_dict(state, strict=not allow_missing_quantizers)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{path} does not fit this model: {first_line(err)}") from err
    if not allow_missing_quantizers:
        return []
    quant_keys = ("_quant.step", "_quant.initialized", "_quant._extra_state")
    other = [k for k in result.missing_keys if not k.endswith(quant_keys)]
    if other or result.unexpected_keys:
        raise ValueError(f"{path} does not fit this model: missing {other[:5]}, unexpected "
                         f"{result.unexpected_keys[:5]}")
    return list(result.missing_keys)



def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to ``path`` atomically. Saved through a file object, so the archive's
    inner name is torch's fixed default rather than the temporary file's name: the same
    tensors give the same bytes (and the same sha256) in every run.

    Args:
        obj: what to save (tensors, dicts of them, numbers, strings).
        path: the target file.

    Returns:
        None.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


