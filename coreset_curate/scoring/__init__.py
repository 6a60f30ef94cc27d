"""Scoring: per-sample scores from a model's outputs (``scores``: the registry and
``score_dataset``), scores taken for free from the training steps (``stepscores``),
reference outputs computed once (``refcache``) and sharded, resumable extraction to a score
table (``extract``)."""
