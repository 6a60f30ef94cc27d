"""Object detection: COCO-layout datasets with boxes (``data``) and a COCO-layout set made
from a classification split for tests and CPU benchmarks (``synth``)."""

from .data import BadAnnotation, DetectionData, hflip, read_coco, resize
from .synth import make_coco

__all__ = ["DetectionData", "read_coco", "make_coco", "hflip", "resize", "BadAnnotation"]
