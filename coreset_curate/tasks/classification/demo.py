"""The walking skeleton: the whole pipeline on scikit-learn's digits in well under a minute.

Two runs of the trainer (``trainer.run_training``), exactly as ``coreset-curate train``
runs them:

1. ``DIR/fp``: a small full-precision CNN (the teacher and the reference);
2. ``DIR/qat``: a copy quantized to W4A4 with LSQ and calibrated on training data, then
   quantization-aware training that, every R epochs, scores every training sample (EVS,
   DS, ...) with the quantized student and selects the ACS subset of the next R epochs,
   distilling from the full-precision model.

Both train on labels with ``label_noise`` (default 10%, symmetric) flipped, so the noise
audit that follows has planted errors to find: ``DIR/audit/`` (``report.html``,
``summary.md``, ``audit.parquet``) from every scoring round, scored against the true labels.

Then ``DIR/scores.parquet`` (every scoring round in one table), ``DIR/index.parquet`` (the
subset of every epoch), ``DIR/fp.pt`` and ``DIR/student.pt`` (state dicts) and
``DIR/summary.json``, and a short summary on the terminal.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ...common.atomic import atomic_path, write_text
from ...data.labels import apply_labels
from ...labels.audit import audit
from ...data import load_data
from ...common.tables import write_table
from ...training import TrainConfig, run_training
from ...common.checks import positive_int

__all__ = ["DemoConfig", "run_demo", "format_summary"]

log = logging.getLogger(__name__)

OUTPUTS = ("scores.parquet", "index.parquet", "fp.pt", "student.pt", "summary.json",
           "audit/report.html")


@dataclass(frozen=True)
class DemoConfig:
    fp_epochs: int = 30
    epochs: int = 12
    reselect_every: int = 3
    fraction: float = 0.1
    method: str = "acs"
    schedule: str = "cos"
    w_bits: int = 4
    a_bits: int = 4
    seed: int = 0
    batch_size: int = 64
    train_limit: int | None = None  # use only the first N training samples (tests)
    label_noise: float = 0.1  # share of training labels flipped (symmetric) for the audit

    def __post_init__(self) -> None:
        for name in ("fp_epochs", "epochs", "reselect_every", "batch_size"):
            v = getattr(self, name)
            positive_int(name, v)
        if not isinstance(self.label_noise, (int, float)) or not 0 <= self.label_noise < 1:
            raise ValueError(f"label_noise must be a number in [0, 1); got {self.label_noise!r}")


def _demo_data(config: DemoConfig):
    data = load_data("digits", "train")
    if config.train_limit:
        import numpy as np

        data = data.subset(np.arange(min(config.train_limit, len(data))))
    return data


def collect_outputs(out: Path) -> tuple[list[Path], pa.Table | None, pa.Table]:
    """The end step of both demos: every scoring round of ``out/qat`` in one
    ``out/scores.parquet`` (not written when there was no round), ``out/qat``'s index as
    ``out/index.parquet``, and the two state dicts as ``out/fp.pt`` and ``out/student.pt``,
    each written atomically. Returns the round files, the scores (or None) and the index."""
    rounds = sorted((out / "qat" / "scores").glob("epoch_*.parquet"))
    scores = pa.concat_tables([pq.read_table(p) for p in rounds]) if rounds else None
    if scores is not None:
        write_table(scores, out / "scores.parquet", overwrite=True)
    index = pq.read_table(out / "qat" / "index.parquet")
    write_table(index, out / "index.parquet", overwrite=True)
    for src, dst in (("fp/model.pt", "fp.pt"), ("qat/model.pt", "student.pt")):
        with atomic_path(out / dst) as tmp:
            shutil.copyfile(out / src, tmp)
    return rounds, scores, index


def run_demo(out: str | Path, config: DemoConfig = DemoConfig(), *,
             overwrite: bool = False) -> dict:
    """Run the demo into folder ``out`` and return its summary (also in summary.json)."""
    out = Path(out)
    clash = [n for n in (*OUTPUTS, "fp", "qat", "audit") if (out / n).exists()]
    if clash and not overwrite:
        raise FileExistsError(f"{out} already holds {clash}; pass overwrite=True (--overwrite)")
    t_all = time.perf_counter()
    common = dict(data="digits", model="small_cnn", batch_size=config.batch_size,
                  optimizer="adam", weight_decay=0.0, seed=config.seed, channels_last=False,
                  eval_batch_size=512, score_batch_size=512, limit_train=config.train_limit,
                  label_noise={"type": "symmetric", "rate": config.label_noise,
                               "seed": config.seed} if config.label_noise else None)
    fp = run_training(TrainConfig(**common, mode="fp", epochs=config.fp_epochs, lr=3e-3,
                                  warmup_epochs=1), out / "fp", overwrite=True)
    qat = run_training(TrainConfig(
        **common, mode="qat", teacher=str(out / "fp" / "model.pt"), w_bits=config.w_bits,
        a_bits=config.a_bits, epochs=config.epochs, lr=5e-4, step_lr=1e-4,
        method=config.method, fraction=config.fraction, reselect_every=config.reselect_every,
        schedule=config.schedule), out / "qat", overwrite=True)

    rounds, scores, index = collect_outputs(out)

    data = _demo_data(config)
    if config.label_noise:  # the labels the scores were made with
        data = apply_labels(data, out / "qat" / "labels.parquet")
    result = audit(rounds, data=data, index=out / "index.parquet",
                   true_labels=(out / "qat" / "labels.parquet") if config.label_noise else None)
    result.write(out / "audit", data=data, overwrite=True)
    top = result.to_pandas()
    top = top[top.flag].sort_values("suspicion", ascending=False).head(5)
    metrics = [json.loads(x) for x in (out / "qat" / "metrics.jsonl").read_text().splitlines()]
    seconds = {"fp_train": fp["train_s"] + fp["eval_s"], "scoring": qat["scoring_s"],
               "selection": qat["selection_s"], "qat_train": qat["train_s"],
               "eval": qat["eval_s"]}
    summary = {
        "config": asdict(config),
        "train_samples": qat["train_samples"],
        "test_samples": qat["test_samples"],
        "fp_top1": fp["top1"],
        "calibrated_top1": qat["calibrated_top1"],
        "qat_top1": qat["top1"],
        "subset_sizes": [m["subset_size"] for m in metrics if m["scoring_s"] > 0],
        "samples_trained_qat": int(sum(m["subset_size"] for m in metrics)),
        "score_rows": scores.num_rows,
        "index_rows": index.num_rows,
        "audit": {"flagged": result.num_flagged, **result.kind_counts(),
                  "planted": None if not result.metrics else result.metrics["flag"]["noisy"],
                  **({k: result.metrics["flag"][k] for k in ("precision", "recall", "f1",
                                                             "auroc")}
                     if result.metrics else {})},
        "suspects": [{"sample_id": int(r.sample_id), "given": int(r.given_label),
                      "suggested": None if r.suggested_label != r.suggested_label
                      else int(r.suggested_label), "kind": r.kind,
                      "suspicion": float(r.suspicion),
                      "true": None if r.true_label != r.true_label else int(r.true_label)}
                     for r in top.itertuples()],
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "wall_s": round(time.perf_counter() - t_all, 3),
        "outputs": [str(out / n) for n in OUTPUTS],
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def format_summary(s: dict) -> str:
    cfg = s["config"]
    tag = f"W{cfg['w_bits']}A{cfg['a_bits']}"
    sec = s["seconds"]
    lines = [
        f"digits: {s['train_samples']} train / {s['test_samples']} test samples",
        f"full-precision small_cnn        top-1 {s['fp_top1']:6.2f}%",
        f"{tag} after calibration        top-1 {s['calibrated_top1']:6.2f}%",
        f"{tag} after {cfg['epochs']} QAT epochs on {cfg['method']} {cfg['fraction']:.0%} subsets "
        f"top-1 {s['qat_top1']:6.2f}%",
        f"selections every {cfg['reselect_every']} epochs, subset sizes {s['subset_sizes']}; "
        f"{s['samples_trained_qat']} sample-steps instead of "
        f"{cfg['epochs'] * s['train_samples']} for full data",
        f"time: fp train {sec['fp_train']:.1f}s, scoring {sec['scoring']:.2f}s, selection "
        f"{sec['selection']:.3f}s, QAT {sec['qat_train']:.1f}s, eval {sec['eval']:.2f}s, "
        f"wall {s['wall_s']:.1f}s",
    ]
    a = s["audit"]
    line = (f"noise audit: {a['flagged']} flagged ({a['mislabeled']} mislabeled, "
            f"{a['fragile']} quantization-fragile, {a['ambiguous']} ambiguous)")
    if a.get("planted") is not None:
        line += (f" of {a['planted']} planted flips: precision {a['precision']:.2f}, recall "
                 f"{a['recall']:.2f}, AUROC {a['auroc']:.3f}")
    lines.append(line)
    for r in s["suspects"]:
        truth = "" if r["true"] is None else f" (true {r['true']})"
        lines.append(f"  sample {r['sample_id']:5d}: given {r['given']}{truth}, suggested "
                     f"{r['suggested']}, {r['kind']}, suspicion {r['suspicion']:.3f}")
    lines.append("wrote " + ", ".join(s["outputs"]))
    return "\n".join(lines)
