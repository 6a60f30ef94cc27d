"""Tasks: what differs between classification and object detection (models, per-sample
scores, loss and distillation, metric, collate) behind ``base.Task``. ``classification``
and ``detection`` hold one task each; ``TASKS`` registers them, ``task_of(data)`` and
``task_for_model(arch)`` find the one a run needs.

The built-in tasks are registered by module name and imported on first use (``get_task``),
so importing this package (as the CLI's parser does, to read each task's ``cli`` module)
loads no torch. A task package may hold a ``cli`` module that adds commands and a demo to
``coreset-curate`` (``coreset_curate.cli.tasks`` reads it).
"""

from importlib import import_module

from .base import (TASKS, EpochInputs, Task, get_task, list_tasks, score_checkpoint,
                   table_task, task_for_model, task_of)

TASKS.add("classification", f"{__name__}.classification.task:ClassificationTask")
TASKS.add("detection", f"{__name__}.detection.task:DetectionTask")

_CLASSES = {"ClassificationTask": ".classification.task", "DetectionTask": ".detection.task"}

__all__ = ["TASKS", "Task", "EpochInputs", "task_of", "task_for_model", "table_task",
           "list_tasks", "get_task", "score_checkpoint", "ClassificationTask",
           "DetectionTask"]


def __getattr__(name: str):
    if name in _CLASSES:
        return getattr(import_module(_CLASSES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
