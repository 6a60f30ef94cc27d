"""The classification task: registered classifiers, batched transforms, (distilled)
cross-entropy, top-1, and the score tables of ``scoring.scores.score_table``."""

from __future__ import annotations

from ..base import EpochInputs, Task

__all__ = ["ClassificationTask"]


class ClassificationTask(Task):
    """Image classification (every dataset that names no task of its own). Its methods
    import what they use (torch among it), so that reading a score table's task does not."""

    name = "classification"
    cli = "coreset_curate.tasks.classification.cli"
    metric = "top1"
    model_noun = "classifier"
    trains_on = "a classifier trains on labelled images"
    free_scores = True
    metadata: dict = {}
    scorer_batch_size = 256
    summary_columns = ("evs", "pred", "label")

    def owns_model(self, arch: str) -> bool:
        from .models import MODELS

        return arch in MODELS

    def create_model(self, arch: str, train, kwargs: dict):
        from .models import create_model

        return create_model(arch, num_classes=train.num_classes,
                            in_channels=train.image_shape[0], **kwargs)

    def inference_batch_size(self, device) -> int:
        from ...data import inference_batch_size

        return inference_batch_size(device)

    def transforms(self, train, config) -> tuple:
        from ...data import default_transforms

        return default_transforms(train, mean=config.mean, std=config.std)

    def calibration_batches(self, train, config, eval_tf, device):
        from ...data import iter_batches, spread_positions

        # spread over the split when streamed (an image folder lists class by class)
        calib_pos = (spread_positions(len(train), 256 * config.calibration_batches)
                     if config.stream else None)
        return (eval_tf(x.to(device)) for _, x, _ in iter_batches(train, 256, calib_pos))

    def train_epoch(self, inputs: EpochInputs) -> float:
        from .loop import train_epoch

        c = inputs.config
        return train_epoch(inputs.model, inputs.data, inputs.transform, inputs.optimizer,
                           positions=inputs.positions, weights=inputs.weights,
                           teacher=inputs.teacher, label_weight=c.label_weight,
                           batch_size=c.batch_size, generator=inputs.generator,
                           scheduler=inputs.scheduler, device=inputs.device,
                           channels_last=c.channels_last, label_smoothing=c.label_smoothing,
                           plan=inputs.plan, on_batch=inputs.on_batch)

    def evaluate(self, model, test, eval_tf, *, batch_size: int, device) -> dict[str, float]:
        from .loop import evaluate

        return {"top1": evaluate(model, test, eval_tf, batch_size=batch_size, device=device)}

    def shown(self, scores: dict[str, float], best: float | None = None) -> str:
        if best is None:
            return f"top-1 {scores['top1']:.2f}%"
        return f"top-1 {scores['top1']:.2f}% (best {best:.2f}%)"

    def score_checkpoint(self, data, model: str, checkpoint, out, **options):
        from .scoring import score_classifier

        return score_classifier(data, model, checkpoint, out, **options)

    def describe_table(self, table) -> str:
        acc = float((table.column("pred").to_numpy() == table.column("label").to_numpy()).mean())
        return (f"{table.num_rows} samples, student top-1 {100 * acc:.2f}%, "
                f"mean EVS {float(table.column('evs').to_numpy().mean()):.4f}")

    def score(self, scorer, model, epoch: int, device, metadata: dict):
        from ...scoring.scores import score_table

        return score_table(model, scorer.rows, scorer.reference_outputs(device),
                             transform=scorer.transform, epoch=epoch, probs=scorer.probs,
                             batch_size=scorer.batch_size, device=device, metadata=metadata)
