"""coreset-curate: quantization-aware adaptive coreset selection for data-efficient QAT.

The public names below are imported on first use, so ``coreset-curate --version`` and
``--help`` answer without loading torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "AdaptiveSelector": "selection.selector",
    "ImageData": "data", "load_data": "data", "default_transforms": "data",
    "EvalTransform": "data", "TrainTransform": "data",
    "create_model": "tasks.classification.models",
    "list_models": "tasks.classification.models",
    "register_model": "tasks.classification.models",
    "quantize_model": "quant", "calibrate_": "quant", "QuantConfig": "quant",
    "score_dataset": "scoring.entry", "register_score": "scoring.measures",
    "list_scores": "scoring.measures",
    "select": "selection", "register_method": "selection", "list_methods": "selection",
    "list_schedules": "selection", "index_table": "common.index", "read_index": "common.index",
    "add_to_index": "common.index",
    "read_table": "common.tables", "write_table": "common.tables",
    "load_subset": "data.subsets", "export_subset": "data.subsets",
    "SubsetSampler": "selection.sampler", "DistributedSubsetSampler": "selection.sampler",
    "TrainConfig": "training", "load_recipe": "training", "run_training": "training",
    "audit": "labels.audit", "AuditResult": "labels.result", "inject_noise": "labels.noise",
    "write_report": "labels.report",
    "curate": "pipeline", "load_curate_recipe": "pipeline", "CurateConfig": "pipeline",
    "clean_labels": "labels.cleaning", "exclusions": "labels.cleaning",
    "register_source": "data.sources", "list_sources": "data.sources",
    "Task": "tasks", "task_of": "tasks", "task_for_model": "tasks", "list_tasks": "tasks",
}

__all__ = ["__version__", *_EXPORTS]

# names that left __all__ and still answer from the top (score_dataset(out=) writes a file)
_FORMER = {"extract_scores": "scoring.extract"}


def __getattr__(name: str):
    if name in _EXPORTS or name in _FORMER:
        value = getattr(import_module(f".{_EXPORTS.get(name) or _FORMER[name]}", __name__),
                        name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'coreset_curate' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
