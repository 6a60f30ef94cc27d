"""Coreset selection: score tables in, the subset of an epoch out.

``entry`` holds ``select``; ``core`` the registries, ``Selection`` and the per-class top-k;
``streamed`` the out-of-core path of tables past the memory budget; ``selector`` the
``AdaptiveSelector`` of a training loop and ``sampler`` its PyTorch samplers;
``scorer`` its scoring rounds; ``methods`` the registered methods, ``noisy`` those that keep likely mislabeled samples
out; ``rounds`` the reading of score tables.
"""

from . import methods as _methods  # noqa: F401  (registers the methods)
from . import noisy as _noisy  # noqa: F401  (registers small_loss and loss_mixture)
from .core import (METHODS, SCHEDULES, Selection, SelectionContext, beta, class_budget,
                   list_methods, list_schedules, register_method, register_schedule,
                   top_fraction)
from .entry import select
from .rounds import BASE_COLUMNS, ScoreRounds, aligned_column, load_rounds

__all__ = ["METHODS", "SCHEDULES", "Selection", "SelectionContext", "beta", "class_budget",
           "list_methods", "list_schedules", "register_method", "register_schedule", "select",
           "top_fraction", "BASE_COLUMNS", "ScoreRounds", "aligned_column", "load_rounds"]
