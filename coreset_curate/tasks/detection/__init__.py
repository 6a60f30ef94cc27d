"""Object detection: COCO-layout datasets with boxes (``data``), a COCO-layout set made
from a classification split for tests and CPU benchmarks (``synth``), and RetinaNet
detectors ready for LSQ (``models``)."""

from .data import (BadAnnotation, DetectionData, LazyImages, from_hf_detection, hflip,
                   read_coco, resize)
from .models import create_detector, list_detectors, register_detector, retinanet
from .synth import make_coco

__all__ = ["DetectionData", "LazyImages", "read_coco", "from_hf_detection", "make_coco", "hflip", "resize", "BadAnnotation",
           "create_detector", "list_detectors", "register_detector", "retinanet"]
