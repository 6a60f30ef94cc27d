"""Training: full-precision training or QAT that re-scores and re-selects its data.

``config`` (``TrainConfig``, recipes), ``loop`` (one epoch with distillation, evaluation),
``schedule`` (learning rate, optimizer groups), ``checkpoint`` (weights-only loading,
atomic saving) and ``run`` (``run_training``, built on ``AdaptiveSelector``).
"""

from .checkpoint import load_checkpoint, load_state, save_atomic, sha256_of
from .config import FULL, TrainConfig, load_recipe, parse_assignments
from .loop import evaluate, predict_logits, rank_plan, soft_cross_entropy, train_epoch
from .run import run_training

__all__ = ["TrainConfig", "load_recipe", "parse_assignments", "run_training", "sha256_of",
           "load_checkpoint", "load_state", "save_atomic", "train_epoch", "evaluate",
           "predict_logits", "rank_plan", "soft_cross_entropy", "FULL"]
