"""Object detection: COCO-layout datasets with boxes (``data``), a COCO-layout set made
from a classification split for tests and CPU benchmarks (``synth``), and RetinaNet
detectors ready for LSQ (``models``); its commands and demo in ``coreset-curate``
(``cli``).

The names below are imported on first use, so the CLI's parser reads ``cli`` without
loading torch.
"""

from importlib import import_module

_EXPORTS = {
    "DetectionData": ".data", "LazyImages": ".data", "read_coco": ".data",
    "from_hf_detection": ".data", "hflip": ".data", "resize": ".data",
    "BadAnnotation": ".data", "make_coco": ".synth", "create_detector": ".models",
    "list_detectors": ".models", "register_detector": ".models", "retinanet": ".models",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
