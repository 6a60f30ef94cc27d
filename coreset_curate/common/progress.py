"""Progress bars (tqdm) that stay quiet when stderr is not a terminal or when disabled."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

__all__ = ["progress"]


def progress(total: int | None = None, desc: str = "", unit: str = "it", **kwargs) -> tqdm:
    """A tqdm bar on stderr, shown when stderr is a terminal.

    ``CORESET_CURATE_PROGRESS=1`` forces bars on (for logs), ``=0`` turns them off.

    Args:
        total: the expected number of steps (``None``: unknown).
        desc: the bar's label.
        unit: the name of one step.
        **kwargs: passed on to ``tqdm``.

    Returns:
        The ``tqdm`` bar (disabled bars cost next to nothing).
    """
    env = os.environ.get("CORESET_CURATE_PROGRESS")
    disable = (not sys.stderr.isatty()) if env is None else env == "0"
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=False,
                dynamic_ncols=True, mininterval=0.5, **kwargs)
