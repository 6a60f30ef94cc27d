"""Tasks: what differs between classification and object detection (models, per-sample
scores, loss and distillation, metric, collate) behind ``base.Task``. ``classification``
and ``detection`` hold one task each; ``TASKS`` registers them, ``task_of(data)`` and
``task_for_model(arch)`` find the one a run needs.
"""

from .base import (TASKS, EpochInputs, Task, list_tasks, score_checkpoint, table_task,
                   task_for_model, task_of)
from .classification.task import ClassificationTask
from .detection.task import DetectionTask

TASKS.add("classification", ClassificationTask())
TASKS.add("detection", DetectionTask())

__all__ = ["TASKS", "Task", "EpochInputs", "task_of", "task_for_model", "table_task",
           "list_tasks", "score_checkpoint", "ClassificationTask", "DetectionTask"]
