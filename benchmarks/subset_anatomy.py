"""What the CIFAR-10 QAT table's 10% subsets are made of: for every selection of every run
in ``benchmarks/runs/`` (made by ``benchmarks/qat_cifar10.py``), the teacher's view of the
chosen samples (how many it gets right, its mean probability of the label), the scoring
student's view (its mean probability of the label, mean EVS and DS), class balance and
overlap with the previous selection.

The per-sample columns come from the ``acs`` run's score table of the same bit width and
epoch: the teacher's columns do not depend on the run; the student's are those of the ACS
student at that epoch, the same yardstick for every method's subset. Reads files only (a
few seconds); writes ``benchmarks/results/subset_anatomy.json`` and prints a table.

    python benchmarks/subset_anatomy.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from coreset_curate.common.atomic import write_text

ROOT = Path(__file__).resolve().parents[1]


def _scores(run: Path, epoch: int) -> dict:
    t = pq.read_table(run / "scores" / f"epoch_{epoch:04d}.parquet").to_pydict()
    order = np.argsort(t["sample_id"])
    return {k: np.asarray(v)[order] for k, v in t.items()}


def anatomy(runs_dir: Path, prefix: str, seed: int = 0) -> list[dict]:
    acs = runs_dir / f"{prefix}_acs_10_s{seed}"
    epochs = sorted(int(p.stem.split("_")[1]) for p in (acs / "scores").glob("*.parquet"))
    scores = {epoch: _scores(acs, epoch) for epoch in epochs}  # read once, used by every run
    rows = []
    for method in ("acs", "el2n", "random_epoch", "random"):
        run = runs_dir / f"{prefix}_{method}_10_s{seed}"
        if not (run / "summary.json").exists():
            continue
        index = pq.read_table(run / "index.parquet").to_pydict()
        ep, sid = np.asarray(index["epoch"]), np.asarray(index["sample_id"])
        summary = json.loads((run / "summary.json").read_text())
        previous = None
        for epoch, s in scores.items():
            chosen = np.sort(sid[ep == epoch])
            pos = np.searchsorted(s["sample_id"], chosen)
            assert np.array_equal(s["sample_id"][pos], chosen)
            label = s["label"][pos]
            counts = np.bincount(label, minlength=int(s["label"].max()) + 1)
            row = {
                "run": run.name, "method": method, "top1": summary["top1"], "epoch": epoch,
                "size": int(len(chosen)),
                "teacher_correct": float((s["ref_pred"][pos] == label).mean()),
                "teacher_prob_label": float(s["ref_prob_label"][pos].mean()),
                "student_prob_label": float(s["prob_label"][pos].mean()),
                "student_correct": float((s["pred"][pos] == label).mean()),
                "evs": float(s["evs"][pos].mean()), "ds": float(s["ds"][pos].mean()),
                "class_min": int(counts.min()), "class_max": int(counts.max()),
                "overlap_prev": (None if previous is None else
                                 float(len(np.intersect1d(previous, chosen)) / len(chosen))),
                # the same columns over all training samples, for scale
                "all_teacher_correct": float((s["ref_pred"] == s["label"]).mean()),
                "all_student_prob_label": float(s["prob_label"].mean()),
                "all_ds": float(s["ds"].mean()),
            }
            rows.append(row)
            previous = chosen
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", default=str(ROOT / "benchmarks" / "runs"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                             "subset_anatomy.json"))
    args = parser.parse_args()
    rows = []
    for prefix in ("w4a4", "w2a2"):
        rows += [{"bits": prefix, **r} for r in anatomy(Path(args.runs_dir), prefix)]
    if not rows:
        raise SystemExit(f"no finished 10% runs with an acs run beside them in {args.runs_dir}")
    result = {"machine": {"cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count()},
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    out = Path(args.out)
    write_text(out, json.dumps(result, indent=2))
    cols = ["bits", "method", "top1", "epoch", "teacher_correct", "teacher_prob_label",
            "student_prob_label", "evs", "ds", "class_min", "class_max", "overlap_prev"]
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for r in rows:
        cells = [r[c] if not isinstance(r[c], float) else f"{r[c]:.3f}" for c in cols]
        print("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    base = {b: next(r for r in rows if r["bits"] == b) for b in ("w4a4", "w2a2")
            if any(r["bits"] == b for r in rows)}
    for b, r in base.items():
        print(f"{b}, all samples at epoch {r['epoch']}: teacher correct "
              f"{r['all_teacher_correct']:.3f}, student prob_label "
              f"{r['all_student_prob_label']:.3f}, ds {r['all_ds']:.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
