"""Decoding encoded images (bytes or paths) into uint8 tensors."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..common.progress import progress

__all__ = ["open_image", "decode_all", "to_nchw_uint8", "decode_image_column"]


def decode_image_column(ds, column: str, num_threads: int | None) -> torch.Tensor:
    import datasets

    table = ds.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    table = table.with_format("arrow")[:]
    structs = table.column(column).combine_chunks()
    blobs = structs.field("bytes").to_pylist()
    paths = structs.field("path").to_pylist()
    return decode_all([b if b is not None else p for b, p in zip(blobs, paths)], num_threads)


def open_image(item):
    """A PIL image from encoded bytes or a file path (not decoded until its pixels are read)."""
    from PIL import Image

    return Image.open(io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item)


def decode_all(items: list, num_threads: int | None) -> torch.Tensor:
    """Encoded images (bytes or paths) of one size and mode as an (N, C, H, W) uint8 tensor."""

    def decode(i: int) -> np.ndarray:
        return np.asarray(open_image(items[i]))

    n = len(items)
    first = decode(0)
    out = np.empty((n, *first.shape), dtype=np.uint8)
    workers = num_threads or min(4, os.cpu_count() or 1)
    chunk = 2048
    with ThreadPoolExecutor(workers) as pool, progress(total=n, desc="decode", unit="img") as bar:
        def run(start: int) -> int:
            for i in range(start, min(start + chunk, n)):
                a = decode(i)
                if a.shape != first.shape or a.dtype != np.uint8:
                    raise ValueError(
                        f"image {i} has shape {a.shape} ({a.dtype}), image 0 has {first.shape} "
                        "(uint8): in-memory loading needs images of one size and mode; "
                        "stream=True crops them to one size as it decodes")
                out[i] = a
            return min(start + chunk, n) - start

        for done in pool.map(run, range(0, n, chunk)):
            bar.update(done)
    return to_nchw_uint8(out)


def to_nchw_uint8(arr: np.ndarray) -> torch.Tensor:
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8; got {arr.dtype}")
    if arr.ndim == 3:  # (N, H, W) grayscale
        arr = arr[:, None]
    elif arr.ndim == 4:
        arr = np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    else:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C); got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr))


