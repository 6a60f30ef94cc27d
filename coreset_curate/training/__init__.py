"""Training: full-precision training or QAT that re-scores and re-selects its data.

``config`` (``TrainConfig``, recipes), ``schedule`` (learning rate, optimizer groups) and
``run`` (``run_training``, built on ``AdaptiveSelector`` and the task of its data: one
epoch and the metric come from ``tasks``). Checkpoint loading and atomic saving live in
``common.checkpoint``, the classification epoch in ``tasks.classification.loop``; both are
re-exported here.
"""

from ..common.checkpoint import load_checkpoint, load_state, save_atomic, sha256_of
from ..common.distributed import rank_plan
from ..tasks.classification.loop import evaluate, predict_logits, soft_cross_entropy, train_epoch
from .config import FULL, TrainConfig
from .recipe import load_recipe, parse_assignments
from .run import run_training

__all__ = ["TrainConfig", "load_recipe", "parse_assignments", "run_training", "sha256_of",
           "load_checkpoint", "load_state", "save_atomic", "train_epoch", "evaluate",
           "predict_logits", "rank_plan", "soft_cross_entropy", "FULL"]
