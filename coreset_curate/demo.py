"""The walking skeleton: the whole pipeline on scikit-learn's digits in well under a minute.

1. train a small full-precision CNN (the reference / teacher);
2. quantize a copy to W4A4 with LSQ, calibrated on training data;
3. every R epochs, score every training sample (EVS, DS, ...) with the quantized student
   and select the ACS subset of the next R epochs;
4. quantization-aware training on the subsets, distilling from the full-precision model;
5. write ``scores.parquet`` (every round) and ``index.parquet`` (every epoch), checkpoints
   and ``summary.json``, and print a short summary.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from .data import default_transforms, load_data
from .models import create_model
from .quant import quantize_model
from .scores import score_dataset
from .selection import index_table, select
from .tables import write_table
from .training import evaluate, train_epoch

__all__ = ["DemoConfig", "run_demo"]

log = logging.getLogger(__name__)

OUTPUTS = ("scores.parquet", "index.parquet", "fp.pt", "student.pt", "summary.json")


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

    def __post_init__(self) -> None:
        for name in ("fp_epochs", "epochs", "reselect_every", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")


def _save_state(model: torch.nn.Module, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)


def run_demo(out: str | Path, config: DemoConfig = DemoConfig(), *,
             overwrite: bool = False) -> dict:
    """Run the demo into folder ``out`` and return its summary (also in summary.json)."""
    out = Path(out)
    clash = [n for n in OUTPUTS if (out / n).exists()]
    if clash and not overwrite:
        raise FileExistsError(f"{out} already holds {clash}; pass overwrite=True (--overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    times: dict[str, float] = {"fp_train": 0.0, "scoring": 0.0, "selection": 0.0,
                               "qat_train": 0.0, "eval": 0.0}
    t_all = time.perf_counter()

    train = load_data("digits", "train")
    if config.train_limit is not None:
        train = train.subset(np.arange(min(config.train_limit, len(train))))
    test = load_data("digits", "test")
    train_tf, eval_tf = default_transforms(train)
    log.info("digits: %d train, %d test images of %s, %d classes", len(train), len(test),
             "x".join(map(str, train.image_shape)), train.num_classes)

    # 1. full-precision reference
    t0 = time.perf_counter()
    fp = create_model("small_cnn", num_classes=train.num_classes, in_channels=1)
    opt = torch.optim.Adam(fp.parameters(), lr=3e-3)
    steps = config.fp_epochs * -(-len(train) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for _ in range(config.fp_epochs):
        train_epoch(fp, train, train_tf, opt, batch_size=config.batch_size, generator=gen,
                    scheduler=sched)
    times["fp_train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fp_top1 = evaluate(fp, test, eval_tf)
    times["eval"] += time.perf_counter() - t0
    fp.eval()

    # 2. quantized student from the full-precision weights
    student = copy.deepcopy(fp)
    calib = (eval_tf(train.images[i : i + 256]) for i in range(0, len(train), 256))
    quantize_model(student, config.w_bits, config.a_bits, calibration=calib)
    t0 = time.perf_counter()
    ptq_top1 = evaluate(student, test, eval_tf)
    times["eval"] += time.perf_counter() - t0

    # 3 + 4. score, select, train
    step_params = [p for n, p in student.named_parameters() if n.endswith(".step")]
    weight_params = [p for n, p in student.named_parameters() if not n.endswith(".step")]
    opt = torch.optim.Adam([{"params": weight_params, "lr": 5e-4},
                            {"params": step_params, "lr": 1e-4}])
    rounds: list[pa.Table] = []
    selections = {}
    subset_sizes = []
    for epoch in range(config.epochs):
        if epoch % config.reselect_every == 0:
            t0 = time.perf_counter()
            rounds.append(score_dataset(student, train, reference=fp, transform=eval_tf,
                                        epoch=epoch, metadata={"arch": "small_cnn",
                                                               "dataset": "digits"}))
            times["scoring"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            current = select(rounds, config.method, config.fraction, epoch=epoch,
                             epochs=config.epochs, schedule=config.schedule, seed=config.seed)
            times["selection"] += time.perf_counter() - t0
            subset_sizes.append(len(current))
        selections[epoch] = current
        t0 = time.perf_counter()
        train_epoch(student, train, train_tf, opt, positions=train.positions(current.sample_ids),
                    weights=current.weights, teacher=fp, batch_size=config.batch_size,
                    generator=gen)
        times["qat_train"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    qat_top1 = evaluate(student, test, eval_tf)
    times["eval"] += time.perf_counter() - t0

    # 5. outputs
    scores = pa.concat_tables(rounds)
    write_table(scores, out / "scores.parquet", overwrite=True)
    index = index_table(selections, metadata={
        "method": config.method, "fraction": config.fraction, "seed": config.seed,
        "R": config.reselect_every, "schedule": config.schedule, "epochs": config.epochs,
        "per_class": True, "sources": [str(out / "scores.parquet")],
        "fingerprint": train.fingerprint})
    write_table(index, out / "index.parquet", overwrite=True)
    _save_state(fp, out / "fp.pt")
    _save_state(student, out / "student.pt")

    last = rounds[-1].to_pandas()
    suspects = last[(last.pred != last.label) & (last.ref_pred != last.label)]
    suspects = suspects.sort_values("evs", ascending=False).head(5)
    summary = {
        "config": asdict(config),
        "train_samples": len(train),
        "test_samples": len(test),
        "fp_top1": fp_top1,
        "calibrated_top1": ptq_top1,
        "qat_top1": qat_top1,
        "subset_sizes": subset_sizes,
        "samples_trained_qat": int(sum(len(s) for s in selections.values())),
        "score_rows": scores.num_rows,
        "index_rows": index.num_rows,
        "suspects": suspects[["sample_id", "label", "pred", "ref_pred", "evs", "ds"]]
        .to_dict(orient="records"),
        "seconds": {k: round(v, 3) for k, v in times.items()},
        "wall_s": round(time.perf_counter() - t_all, 3),
        "outputs": [str(out / n) for n in OUTPUTS],
    }
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=_json_default))
    tmp.replace(out / "summary.json")
    return summary


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


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
        "most suspicious labels (student and reference both disagree, highest EVS):",
    ]
    for r in s["suspects"]:
        lines.append(f"  sample {r['sample_id']:5d}: given {r['label']}, student says {r['pred']}, "
                     f"reference says {r['ref_pred']}, evs {r['evs']:.3f}")
    if not s["suspects"]:
        lines.append("  none")
    lines.append("wrote " + ", ".join(s["outputs"]))
    return "\n".join(lines)
