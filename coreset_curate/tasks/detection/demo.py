"""The detection demo: RetinaNet QAT with adaptive coreset selection on digit canvases made
here, no download.

``coreset-curate demo --task detection --out DIR`` (``run_detection_demo``):

1. ``DIR/data``: a COCO-layout detection set made by ``make_coco`` from scikit-learn's
   8x8 digits (1-3 digits, 16-28 px, pasted on 48-64 px canvases; training canvases from
   the digits' training split, test canvases from its test split, so no digit of the
   test set is trained on);
2. ``DIR/backbone``: torchvision's ResNet-18 trained as a classifier of the training
   digits enlarged to 24 px (``DIR/data/digits24``, Parquet): the detector's pretrained
   backbone, as a COCO RetinaNet starts from an ImageNet-trained one. From an untrained
   backbone the detector finds the digits but scores every class alike (AP 0.10 after
   24 epochs, against 0.30 from this backbone, measured while building the demo);
3. ``DIR/fp``: a full-precision RetinaNet (ResNet-18 FPN, 32-channel pyramid and head)
   from that backbone: the teacher and the DS reference;
4. ``DIR/qat``: a copy quantized to W4A4 with LSQ and calibrated, then QAT that every R
   epochs scores every training image (EVS, DS, loss, ...) with the quantized student and
   trains on the ACS subset of the next R epochs, distilling from the teacher's head
   outputs, with COCO AP on the test canvases every epoch.

All three are runs of the trainer (``run_training``), exactly as ``coreset-curate train``
with a detection recipe runs them. Then ``DIR/scores.parquet`` (every scoring round in
one table), ``DIR/index.parquet`` (the subset of every epoch), ``DIR/fp.pt`` and
``DIR/student.pt`` (state dicts) and ``DIR/summary.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ...common.atomic import atomic_path, write_text
from ...common.checks import fraction, non_negative_int, positive_int

__all__ = ["DetectionDemoConfig", "run_detection_demo", "format_detection_summary"]

OUTPUTS = ("scores.parquet", "index.parquet", "fp.pt", "student.pt", "summary.json")


@dataclass(frozen=True)
class DetectionDemoConfig:
    train_images: int = 400
    test_images: int = 100
    backbone_epochs: int = 10
    fp_epochs: int = 24
    epochs: int = 12
    reselect_every: int = 3
    fraction: float = 0.1
    method: str = "acs"
    schedule: str = "cos"
    w_bits: int = 4
    a_bits: int = 4
    seed: int = 0
    batch_size: int = 16
    fpn_channels: int = 32
    fp_lr: float = 0.05  # SGD; QAT at a tenth, as the CPU detection recipes

    def __post_init__(self) -> None:
        for name in ("train_images", "test_images", "backbone_epochs", "fp_epochs", "epochs", "reselect_every",
                     "batch_size", "fpn_channels"):
            positive_int(name, getattr(self, name))
        non_negative_int("seed", self.seed)
        fraction("fraction", self.fraction)
        if not self.fp_lr > 0:
            raise ValueError(f"fp_lr must be positive; got {self.fp_lr!r}")


BACKBONE_SIDE = 24  # the digits' side for the backbone, within the pasted 16-28 px


def _make_data(root: Path, config: DetectionDemoConfig) -> None:
    """The COCO-layout canvases, and the enlarged digits the backbone learns from."""
    import datasets
    import torch
    import torch.nn.functional as F

    from ...data import load_data, to_hf_dataset
    from ...data.memory import ImageData
    from .synth import make_coco

    shape = dict(canvas=(48, 64), objects=(1, 3), object_size=(16, 28), overwrite=True)
    for split, count, seed in (("train", config.train_images, config.seed),
                               ("test", config.test_images, config.seed + 1)):
        digits = load_data("digits", split)
        make_coco(digits, root, split, count=count, seed=seed, **shape)
        big = F.interpolate(digits.images.float(), size=(BACKBONE_SIDE,) * 2,
                            mode="bilinear", antialias=True, align_corners=False)
        big = big.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
        rgb = ImageData(big, digits.labels, digits.sample_ids, digits.class_names, split,
                        "digits24")
        (root / "digits24").mkdir(parents=True, exist_ok=True)
        quiet = datasets.utils.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # a bar for a file written in a blink
        try:
            with atomic_path(root / "digits24" / f"{split}-00000.parquet") as tmp:
                to_hf_dataset(rgb).to_parquet(str(tmp))
        finally:
            if not quiet:
                datasets.enable_progress_bars()


def run_detection_demo(out: str | Path, config: DetectionDemoConfig = DetectionDemoConfig(),
                       *, overwrite: bool = False) -> dict:
    """Run the detection demo into folder ``out`` (module doc); returns its summary (also
    in ``summary.json``)."""
    from ...training import TrainConfig, run_training

    try:  # before minutes of training: every epoch ends with COCO AP
        import pycocotools.cocoeval  # noqa: F401
    except ImportError as err:
        raise ImportError("the detection demo measures COCO AP with pycocotools: "
                          "pip install 'coreset-curate[detection]'") from err
    out = Path(out)
    clash = [n for n in (*OUTPUTS, "data", "backbone", "fp", "qat") if (out / n).exists()]
    if clash and not overwrite:
        raise FileExistsError(f"{out} already holds {clash}; pass overwrite=True (--overwrite)")
    t_all = time.perf_counter()
    _make_data(out / "data", config)
    t_data = time.perf_counter() - t_all
    backbone = run_training(TrainConfig(
        data=str(out / "data" / "digits24"), model="resnet18", mode="fp",
        epochs=config.backbone_epochs, batch_size=64, optimizer="sgd", lr=0.05,
        weight_decay=5e-4, warmup_epochs=1, seed=config.seed, channels_last=False),
        out / "backbone", overwrite=True)
    common = dict(
        data=f"coco:{out / 'data'}", model="retinanet_resnet18_fpn",
        model_kwargs={"fpn_channels": config.fpn_channels, "min_size": 64, "max_size": 64,
                      "backbone_weights": str(out / "backbone" / "model.pt")},
        batch_size=config.batch_size, optimizer="sgd", momentum=0.9, nesterov=False,
        weight_decay=1e-4, seed=config.seed, channels_last=False)
    fp = run_training(TrainConfig(**common, mode="fp", epochs=config.fp_epochs,
                                  lr=config.fp_lr, warmup_epochs=1), out / "fp",
                      overwrite=True)
    qat = run_training(TrainConfig(
        **common, mode="qat", teacher=str(out / "fp" / "model.pt"), w_bits=config.w_bits,
        a_bits=config.a_bits, label_weight=1.0, epochs=config.epochs, lr=config.fp_lr / 10,
        method=config.method, fraction=config.fraction,
        reselect_every=config.reselect_every, schedule=config.schedule), out / "qat",
        overwrite=True)

    summary = _summary(out, config, backbone, fp, qat, t_data, t_all)
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def _summary(out: Path, config: DetectionDemoConfig, backbone: dict, fp: dict, qat: dict,
             t_data: float, t_all: float) -> dict:
    """What ``summary.json`` holds: the runs' AP, the subsets, the time of every stage."""
    from ..classification.demo import collect_outputs
    from .data import read_coco

    _, scores, index = collect_outputs(out)
    train = read_coco(out / "data", "train")
    metrics = [json.loads(x) for x in (out / "qat" / "metrics.jsonl").read_text().splitlines()]
    return {
        "config": asdict(config),
        "train_images": fp["train_samples"], "test_images": fp["test_samples"],
        "train_boxes": int(sum(len(b) for b in train.boxes)),
        "backbone_top1": backbone["top1"],
        "fp": {k: fp[k] for k in ("ap", "ap50", "ap75")},
        "calibrated_ap": qat["calibrated_ap"],
        "qat": {k: qat[k] for k in ("ap", "ap50", "ap75", "best_ap")},
        "subset_sizes": [m["subset_size"] for m in metrics if m["scoring_s"] > 0],
        "images_trained_qat": int(sum(m["subset_size"] for m in metrics)),
        "score_rows": 0 if scores is None else scores.num_rows,
        "index_rows": index.num_rows,
        "seconds": {"data": round(t_data, 3),
                    "backbone": round(backbone["train_s"] + backbone["eval_s"], 3),
                    "fp_train": round(fp["train_s"], 3),
                    "fp_eval": round(fp["eval_s"], 3), "scoring": round(qat["scoring_s"], 3),
                    "selection": round(qat["selection_s"], 3),
                    "qat_train": round(qat["train_s"], 3), "qat_eval": round(qat["eval_s"], 3)},
        "wall_s": round(time.perf_counter() - t_all, 3),
        "outputs": [str(out / n) for n in OUTPUTS],
    }


def format_detection_summary(s: dict) -> str:
    cfg, sec = s["config"], s["seconds"]
    tag = f"W{cfg['w_bits']}A{cfg['a_bits']}"

    def ap(d):
        return f"AP {d['ap']:.3f}  AP50 {d['ap50']:.3f}  AP75 {d['ap75']:.3f}"

    lines = [
        f"digit canvases: {s['train_images']} train / {s['test_images']} test images, "
        f"{s['train_boxes']} training boxes",
        f"backbone: ResNet-18 on the training digits at {BACKBONE_SIDE} px, top-1 "
        f"{s['backbone_top1']:.2f}% on the test digits",
        f"full-precision RetinaNet (ResNet-18 FPN, {cfg['fpn_channels']} ch)  {ap(s['fp'])}",
        f"{tag} after calibration                 AP {s['calibrated_ap']:.3f}",
        f"{tag} after {cfg['epochs']} QAT epochs on {cfg['method']} {cfg['fraction']:.0%} "
        f"subsets  {ap(s['qat'])}",
        f"selections every {cfg['reselect_every']} epochs, subset sizes {s['subset_sizes']}; "
        f"{s['images_trained_qat']} image-steps instead of "
        f"{cfg['epochs'] * s['train_images']} for full data",
        f"time: data {sec['data']:.1f}s, backbone {sec['backbone']:.1f}s, fp train {sec['fp_train']:.1f}s, scoring "
        f"{sec['scoring']:.1f}s, QAT {sec['qat_train']:.1f}s, eval "
        f"{sec['fp_eval'] + sec['qat_eval']:.1f}s, wall {s['wall_s']:.1f}s",
        "wrote " + ", ".join(s["outputs"]),
    ]
    return "\n".join(lines)
