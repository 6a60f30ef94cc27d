"""coreset-curate: quantization-aware adaptive coreset selection for data-efficient QAT.

The public names below are imported on first use, so ``coreset-curate --version`` and
``--help`` answer without loading torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "AdaptiveSelector": "selector", "RoundScorer": "selector",
    "ImageData": "data", "load_data": "data", "default_transforms": "data", "as_rows": "data",
    "EvalTransform": "data", "TrainTransform": "data",
    "create_model": "models", "list_models": "models", "register_model": "models",
    "quantize_model": "quant", "calibrate_": "quant", "QuantConfig": "quant",
    "score_dataset": "scores", "register_score": "scores", "list_scores": "scores",
    "select": "selection", "register_method": "selection", "list_methods": "selection",
    "list_schedules": "selection", "index_table": "index", "read_index": "index",
    "add_to_index": "index",
    "read_table": "tables", "write_table": "tables",
    "extract_scores": "extract",
    "load_subset": "hf", "export_subset": "hf",
    "SubsetSampler": "sampler", "DistributedSubsetSampler": "sampler",
    "TrainConfig": "training", "load_recipe": "training", "run_training": "training",
    "audit": "noise_audit", "AuditResult": "noise_audit", "inject_noise": "noise",
    "write_report": "report",
    "curate": "pipeline", "load_curate_recipe": "pipeline", "CurateConfig": "pipeline",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'coreset_curate' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
