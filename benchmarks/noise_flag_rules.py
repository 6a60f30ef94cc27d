"""Flagging rules compared on the noise benchmark's finished runs (no training: reads the
score rounds and labels that ``benchmarks/noise_audit.py`` left in ``benchmarks/runs/``).

Every rule flags from the same confident joint (``audit``'s, averaged over the rounds);
they differ in how the flagged samples are chosen:

- ``class/channel``, ``class/prob``, ``class/aum``, ``class/evs``: the audit's rule, the
  estimated number of wrong labels of each class taken from the class's most suspicious
  samples, with the audit's four suspicion scores (``channel`` reads the finished model's
  softmax, which the runs' last round holds);
- ``cell/margin``: per off-diagonal cell (given i, confident class j) of the joint, that many
  of the samples labeled i that the last round predicts as j, largest ``max_prob -
  prob_label`` first (the per-cell pruning of confident learning, on what a score table
  holds: the predicted class's probability, not the whole softmax);
- ``cell+class``: ``cell/margin``, then each class filled up to its count by suspicion.

Writes ``benchmarks/results/noise_flag_rules.json`` and prints a table.

    python benchmarks/noise_flag_rules.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from coreset_curate.common.atomic import write_text

ROOT = Path(__file__).resolve().parents[1]
TAGS = {"noise_sym20": ("symmetric", 0.2), "noise_sym40": ("symmetric", 0.4),
        "noise_asy20": ("asymmetric", 0.2)}


def _cell_flags(joint, labels, pred, margin_to_pred) -> np.ndarray:
    flag = np.zeros(len(labels), dtype=bool)
    k = joint.shape[0]
    for i in range(k):
        for j in range(k):
            n = int(np.rint(joint[i, j]))
            if i == j or n <= 0:
                continue
            cand = np.flatnonzero((labels == i) & (pred == j))
            flag[cand[np.argsort(-margin_to_pred[cand], kind="stable")[:n]]] = True
    return flag


def _fill(flag, joint, labels, suspicion) -> np.ndarray:
    out = flag.copy()
    for i in range(joint.shape[0]):
        want = int(np.rint(joint[i].sum() - joint[i, i])) - int(flag[labels == i].sum())
        rest = np.flatnonzero((labels == i) & ~flag)
        out[rest[np.argsort(-suspicion[rest], kind="stable")[:max(want, 0)]]] = True
    return out


def compare(run: Path) -> dict:
    import pyarrow.parquet as pq

    from coreset_curate.labels.audit import audit, flag_metrics
    from coreset_curate.labels.noise import read_labels

    rounds = sorted(str(p) for p in (run / "scores").glob("epoch_*.parquet"))
    labels_path = run / "labels.parquet"
    ids, noisy, true, _ = read_labels(labels_path)
    wrong = noisy != true
    rules = {}
    for s in ("channel", "prob", "aum", "evs"):
        res = audit(rounds, suspicion=s, true_labels=labels_path)
        rules[f"class/{s}"] = res.metrics["flag"]
        if s == "prob":
            joint, susp = res.confident_joint, res.table.column("suspicion").to_numpy()
    names = ("sample_id", "label", "pred", "prob_label", "max_prob")
    last = pq.read_table(rounds[-1], columns=list(names)).to_pydict()
    order = np.argsort(last["sample_id"])
    col = {k: np.asarray(last[k])[order] for k in names}
    assert np.array_equal(col["sample_id"], ids)
    cell = _cell_flags(joint, col["label"], col["pred"], col["max_prob"] - col["prob_label"])
    rules["cell/margin"] = flag_metrics(cell, susp, wrong)
    rules["cell+class"] = flag_metrics(_fill(cell, joint, col["label"], susp), susp, wrong)
    return {"rounds": len(rounds), "noisy": int(wrong.sum()), "rules": rules}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", default=str(ROOT / "benchmarks" / "runs"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                             "noise_flag_rules.json"))
    args = parser.parse_args()
    audit_results = ROOT / "benchmarks" / "results" / "noise_audit.json"
    cleanlab = {(r["noise_type"], r["noise_rate"]): r["cleanlab"]
                for r in (json.loads(audit_results.read_text()) if audit_results.exists()
                          else []) if r.get("kind", "audit") == "audit"}
    rows = []
    for tag, (noise_type, rate) in TAGS.items():
        run = Path(args.runs_dir) / tag / "qat"
        if not (run / "summary.json").exists():
            continue
        rows.append({"noise_type": noise_type, "noise_rate": rate, **compare(run),
                     "cleanlab": cleanlab.get((noise_type, rate))})
    if not rows:
        raise SystemExit(f"no finished noise runs in {args.runs_dir}: run noise_audit.py first")
    out = Path(args.out)
    write_text(out, json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))
    names = list(rows[0]["rules"]) + ["cleanlab"]
    print("| noise | " + " | ".join(f"{n} F1 (P/R)" for n in names) + " |")
    print("|" + " --- |" * (len(names) + 1))
    for r in rows:
        cells = []
        for n in names:
            m = r["rules"].get(n) if n != "cleanlab" else r["cleanlab"]
            cells.append("" if m is None else
                         f"{m['f1']:.3f} ({m['precision']:.2f}/{m['recall']:.2f})")
        print(f"| {r['noise_type']} {r['noise_rate']:.0%} | " + " | ".join(cells) + " |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
