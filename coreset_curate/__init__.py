"""coreset-curate: quantization-aware adaptive coreset selection for data-efficient QAT."""

__version__ = "0.1.0"

from .data import ImageData, load_data, default_transforms, EvalTransform, TrainTransform  # noqa: E402
from .models import create_model, list_models, register_model  # noqa: E402
from .quant import quantize_model, calibrate_, QuantConfig  # noqa: E402
from .scores import score_dataset, register_score  # noqa: E402
from .selection import select, index_table, register_method  # noqa: E402
from .tables import read_table, write_table  # noqa: E402

__all__ = [
    "__version__",
    "ImageData",
    "load_data",
    "default_transforms",
    "EvalTransform",
    "TrainTransform",
    "create_model",
    "list_models",
    "register_model",
    "quantize_model",
    "calibrate_",
    "QuantConfig",
    "score_dataset",
    "register_score",
    "select",
    "index_table",
    "register_method",
    "read_table",
    "write_table",
]
