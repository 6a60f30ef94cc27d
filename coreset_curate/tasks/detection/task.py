"""The detection task: registered RetinaNet detectors on COCO-layout data, RetinaNet's
losses with distillation of the teacher's head outputs, COCO AP, and per-image score
tables (``scores.score_detections``)."""

from __future__ import annotations

from ..base import EpochInputs, Task

__all__ = ["DetectionTask"]

# config keys a detector's run does not take (yet)
_UNSET = ("labels", "label_noise", "exclude", "audit_every")
_OFF = ("free_scores", "compile")


class DetectionTask(Task):
    """Object detection (``DetectionData``, whose ``task`` is ``"detection"``)."""

    name = "detection"
    cli = "coreset_curate.tasks.detection.cli"
    metric = "ap"
    model_noun = "detector"
    trains_on = "a detector trains on coco:ROOT data"
    free_scores = False
    # a detection table's label is -1 for an image without boxes
    metadata = {"task": "detection"}
    scorer_batch_size = 16
    min_label = -1  # an image without boxes
    label_rule = " (or -1 in a detection table)"
    audit_refusal = ("the noise audit reads a classifier's scores (one label a sample); these "
                     "are a detection set's per-image scores, whose label is only the image's "
                     "most frequent class: auditing boxes is not built yet")

    def owns_model(self, arch: str) -> bool:
        from .models import DETECTORS

        return arch in DETECTORS

    def create_model(self, arch: str, train, kwargs: dict):
        from .models import create_detector

        return create_detector(arch, num_classes=train.num_classes, **kwargs)

    def check_config(self, config) -> None:
        unsupported = [k for k in _UNSET if getattr(config, k) is not None]
        unsupported += [k for k in _OFF if getattr(config, k)]
        if unsupported:
            raise ValueError(f"{unsupported} do not apply to a detector ({config.model!r}) "
                             "yet: class noise on boxes is made with `coreset-curate "
                             "make-detection --class-noise`")
        if config.mean is not None or config.std is not None:
            raise ValueError("a detector normalises its images itself: leave mean and std "
                             "unset")

    def inference_batch_size(self, device) -> int:
        return 16  # a detector's images are large and of many sizes

    def transforms(self, train, config) -> tuple:
        # a detector normalises and resizes its images itself, and flips them with their boxes
        return None, None

    def calibration_batches(self, train, config, eval_tf, device):
        from ...data import spread_positions
        from .data import calibration_batches

        return calibration_batches(train, spread_positions(len(train),
                                                           16 * config.calibration_batches),
                                   device=device)

    def train_model(self, model, config):
        from .train import DetectorLoss

        return DetectorLoss(model, config.label_weight)

    def train_epoch(self, inputs: EpochInputs) -> float:
        from .train import train_detection_epoch

        return train_detection_epoch(inputs.model, inputs.data, inputs.optimizer,
                                     positions=inputs.positions, weights=inputs.weights,
                                     teacher=inputs.teacher, batch_size=inputs.config.batch_size,
                                     generator=inputs.generator, scheduler=inputs.scheduler,
                                     device=inputs.device, plan=inputs.plan)

    def evaluate(self, model, test, eval_tf, *, batch_size: int, device) -> dict[str, float]:
        from .evaluate import coco_ap

        ap = coco_ap(model, test, batch_size=batch_size, device=device)
        return {k: ap[k] for k in ("ap", "ap50", "ap75")}

    def shown(self, scores: dict[str, float], best: float | None = None) -> str:
        line = f"AP {scores['ap']:.3f}, AP50 {scores['ap50']:.3f}"
        return line if best is None else f"{line} (best AP {best:.3f})"

    def score_checkpoint(self, data, model: str, checkpoint, out, **options):
        from .scoring import score_detector

        return score_detector(data, model, checkpoint, out, **options)

    def describe_table(self, table) -> str:
        import numpy as np

        evs = np.nanmean(table.column("evs").to_numpy(zero_copy_only=False))
        return f"{table.num_rows} images, mean EVS {float(evs):.4f}"

    def score(self, scorer, model, epoch: int, device, metadata: dict):
        from .scores import score_detections

        # the reference's outputs of each batch are kept between rounds (scorer.cache)
        return score_detections(model, scorer.rows, scorer.reference, epoch=epoch,
                                batch_size=scorer.batch_size, device=device,
                                metadata=metadata, reference_cache=scorer.cache)
