"""The commands and demos the tasks add to the CLI.

A task names its ``cli`` module in ``Task.cli`` (a task registered as ``"pkg.task:Class"``,
as the built-in ones are, has ``pkg.cli`` where that exists, read without importing the
task). The module has ``add_commands(sub, options)``
(its own subcommands, built from the shared ``options``) and, for ``demo --task NAME``,
``run_demo(out, chosen, overwrite) -> str`` with ``DEMO_HELP`` and ``DEMO_FP_EPOCHS``. The
CLI names no task itself. Reading them imports no torch: the built-in tasks are registered
by module name and their ``cli`` modules import their work lazily.
"""

from __future__ import annotations

import importlib.util
from importlib import import_module
from types import ModuleType

__all__ = ["task_clis", "demo_tasks"]


def _cli_module(entry) -> str:
    if not isinstance(entry, str):
        return getattr(entry, "cli", "")
    package = entry.partition(":")[0].rpartition(".")[0]
    if not package or importlib.util.find_spec(f"{package}.cli") is None:
        return ""
    return f"{package}.cli"


def task_clis() -> dict[str, ModuleType]:
    """The ``cli`` module of every registered task that has one, by task name (sorted)."""
    from ..tasks import TASKS

    found = {}
    for name in TASKS.names():
        module = _cli_module(TASKS[name])
        if module:
            found[name] = import_module(module)
    return found


def demo_tasks() -> dict[str, ModuleType]:
    """The tasks' ``cli`` modules that run a demo, by task name."""
    return {name: m for name, m in task_clis().items() if hasattr(m, "run_demo")}
