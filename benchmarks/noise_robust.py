"""Noise robustness on real CIFAR-10: does acting on the audit make ACS robust to label noise?

For each setting (20% and 40% symmetric, 20% asymmetric noise, noise seed 0):

1. a full-precision ResNet-20 teacher trained on the noisy labels (``--fp-epochs``, 8: short
   on purpose, a teacher that memorised its labels cannot audit them), as
   benchmarks/noise_audit.py trains it;
2. the audit that cleaning acts on: two scoring rounds, the teacher's own and the
   calibrated W4A4 student's (DS and the reference columns against the teacher), both
   with the softmax; ``coreset-curate audit`` of them, then ``clean`` into a relabeled
   labels table (``audit/``, ``clean_relabel.parquet``); the flags' precision and recall
   against the true labels are recorded;
3. W4A4 QAT, the CPU recipe's 12 epochs with a label term (``label_weight: 0.5``) beside
   distillation from that teacher: ``full`` on the noisy labels, and at 10% ``acs``
   (the recipe's R = 4) and ``random_epoch`` (re-drawn every epoch: R = 1, the same cost),
   each with no cleaning, with ``exclude`` (the audit's flagged mislabeled samples never
   selected; class budgets those of all samples, so the same number of steps), with
   ``relabel`` (trained on the relabeled table) and with ``exclude_retrain`` (``exclude``,
   distilling from a second teacher trained the same way on the cleaned labels: ``clean``
   without ``--relabel``, the flagged samples left out); ``rho`` at 10% (its shipped
   recipe: free training-step scores, re-selected every epoch) with no cleaning and with
   ``exclude_retrain``; and ``acs`` with ``exclude_retrain_audit`` (that, and the audit run
   again on its own scoring rounds at every selection round, ``audit_every: 1``, its
   flags kept out from then on).

Once: ``full`` on clean labels from a teacher trained the same way on clean labels (the
ceiling). Every run lives in ``benchmarks/runs/noise_robust/`` and resumes from its last
epoch; finished rows are skipped. Run folders stay on the machine that made them, so each
teacher's ``model.pt`` and noisy ``labels.parquet`` (1.3 MB together) are also copied into
``benchmarks/kept/noise_robust/`` with their sha256 in the record: commit them, and a new
machine goes on with the setting's rows from them (the audit, two minutes, is made again
there and must reproduce its record). Results: ``benchmarks/results/noise_robust.json`` (one
record per run: ``noise_type``, ``noise_rate``, ``method``, ``fraction``, ``cleaning``,
``top1``, ``noisy_share`` of the subsets, ``wall_s`` with scoring included, ``seed``, and
``cores_oversubscribed`` when another process shared the cores), rendered into
docs/benchmarks/noise-robust.md::

    nohup python benchmarks/noise_robust.py > noise_robust.log 2>&1 &
    python benchmarks/noise_robust.py --render

``--pipeline`` runs the rows of the whole pipeline instead (``coreset-curate curate``, three
seeds, with their controls: see benchmarks/noise_pipeline.py)::

    nohup python benchmarks/noise_robust.py --pipeline > noise_pipeline.log 2>&1 &
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from readme_table import write_between
from resumable import ROOT, Results, parser, rendered, stage, start, train

RUNS_DIR = ROOT / "benchmarks" / "runs" / "noise_robust"
RESULTS = Results(ROOT / "benchmarks" / "results" / "noise_robust.json")
README = ROOT / "docs" / "benchmarks" / "noise-robust.md"
TABLE_START, TABLE_END = "<!-- noise-robust:start -->", "<!-- noise-robust:end -->"
SETTINGS = [("symmetric", 0.2), ("symmetric", 0.4), ("asymmetric", 0.2)]
# (method, fraction, R, cleaning) of every noisy setting, in the order they run: the 10%
# rows first (they answer whether cleaning keeps noise out of the subsets), then full data
ROWS = [("acs", 0.1, 4, "none"), ("random_epoch", 0.1, 1, "none"),
        ("acs", 0.1, 4, "exclude"), ("random_epoch", 0.1, 1, "exclude"),
        # exclude, and distil from a teacher trained again on the cleaned labels (the 20%
        # reading: the students land near the noisy teacher whatever their subsets hold)
        ("acs", 0.1, 4, "exclude_retrain"), ("random_epoch", 0.1, 1, "exclude_retrain"),
        # the project's rho (reducible loss: a wrong label is as hard for the teacher, so it
        # ranks low) without and with that cleaning, and ACS auditing its own rounds as it
        # goes (audit_every: 1, every selection round) on top of it: whether anything keeps
        # the noise the audit missed out of the subsets better than a random draw
        ("rho", 0.1, 1, "none"), ("rho", 0.1, 1, "exclude_retrain"),
        ("acs", 0.1, 4, "exclude_retrain_audit"),
        ("acs", 0.1, 4, "relabel"), ("random_epoch", 0.1, 1, "relabel"),
        ("full", 1.0, 4, "none")]
LABEL_WEIGHT = 0.5
# the recipe a method's rows start from (rho: its shipped 10% recipe, free training-step
# scores re-selected every epoch); the rows' own settings are set over it
RECIPES = {"rho": "cifar10_resnet20_w4a4_rho_10.yaml"}


def tag(noise_type: str | None, rate: float | None) -> str:
    return "clean" if noise_type is None else f"{noise_type[:3]}{round(rate * 100)}"


def noise_key(noise_type, rate) -> list[str]:
    return [] if noise_type is None else [
        f"label_noise={{type: {noise_type}, rate: {rate}, seed: 0}}"]


def teacher(args, noise_type, rate) -> Path:
    """The setting's full-precision teacher (``model.pt``, and the noisy ``labels.parquet``
    it was trained on): its files are kept in ``benchmarks/kept/noise_robust/`` so that a
    setting's rows can go on on a new machine (commit them; smoke runs keep nothing)."""
    from coreset_curate.training import load_recipe

    out = RUNS_DIR / tag(noise_type, rate) / "fp"
    name = f"{tag(noise_type, rate)}_fp"

    def build() -> dict:
        cfg = load_recipe(ROOT / "recipes" / "cifar10_resnet20_fp.yaml",
                          [f"data={args.data}", f"epochs={args.fp_epochs}",
                           *noise_key(noise_type, rate), *args.common])
        summary = train(cfg, out)
        return {"name": name, "kind": "teacher", "noise_type": noise_type,
                "noise_rate": rate, **{k: summary[k] for k in (
                    "epochs", "top1", "best_top1", "wall_s", "train_samples",
                    "cores_oversubscribed")},
                **args.info}

    files = ("model.pt",) if noise_type is None else ("model.pt", "labels.parquet")
    return stage(RESULTS, name, out, build, files,
                 keep=None if args.results else f"noise_robust/{name}")


def cleaning_audit(args, noise_type, rate, fp_dir: Path) -> Path:
    """Score the teacher and the calibrated student, audit both rounds, write the
    relabeled table (``audit/`` and ``clean_relabel.parquet`` in the setting's folder,
    which is returned; made again, and checked against its record, when they are gone)."""
    name = f"{tag(noise_type, rate)}_audit"
    return stage(RESULTS, name, fp_dir.parent,
                 lambda: _audit(args, noise_type, rate, fp_dir, name),
                 ("audit/audit.parquet", "clean_relabel.parquet"))


def _audit(args, noise_type, rate, fp_dir: Path, name: str) -> dict:
    from coreset_curate.data import default_transforms, iter_batches, load_data, spread_positions
    from coreset_curate.labels.cleaning import apply_labels, exclusions, read_labels_table
    from coreset_curate.tasks.classification.models import create_model
    from coreset_curate.quant import calibrate_, quantize_model
    from coreset_curate.scoring.scores import score_table
    from coreset_curate.common.tables import write_table
    from coreset_curate.training import load_checkpoint, load_recipe

    folder = fp_dir.parent
    t0 = time.perf_counter()
    train_set = load_data(args.data, "train")
    if args.limit_train:
        train_set = train_set.subset(np.arange(min(args.limit_train, len(train_set))))
    train_set = apply_labels(train_set, fp_dir / "labels.parquet")  # the noisy labels
    _, eval_tf = default_transforms(train_set)
    qat = load_recipe(ROOT / "recipes" / "cifar10_resnet20_w4a4_full.yaml")
    fp = create_model("resnet20", num_classes=train_set.num_classes)
    load_checkpoint(fp, fp_dir / "model.pt")
    student = create_model("resnet20", num_classes=train_set.num_classes)
    student.load_state_dict(fp.state_dict())
    quantize_model(student, qat.w_bits, qat.a_bits, per_channel=qat.per_channel,
                   first_last=qat.first_last, init=qat.quant_init)
    rows = spread_positions(len(train_set), 256 * qat.calibration_batches)
    calibrate_(student, (eval_tf(x) for _, x, _ in iter_batches(train_set, 256, rows)),
               max_batches=qat.calibration_batches)
    rounds = []
    for epoch, (model, ref) in enumerate(((fp, None), (student, fp))):
        table = score_table(model, train_set, ref, transform=eval_tf, epoch=epoch,
                              probs=True, batch_size=256)
        rounds.append(write_table(table, folder / "rounds" / f"epoch_{epoch:04d}.parquet",
                                  overwrite=True))
    scoring_s = time.perf_counter() - t0
    cli = [sys.executable, "-m", "coreset_curate"]
    subprocess.run([*cli, "audit", "--scores", *map(str, rounds), "--true-labels",
                    str(fp_dir / "labels.parquet"), "--out", str(folder / "audit"),
                    "--overwrite"], check=True)
    subprocess.run([*cli, "clean", "--audit", str(folder / "audit"), "--relabel",
                    "--labels", str(fp_dir / "labels.parquet"),
                    "--out", str(folder / "clean_relabel.parquet"), "--overwrite"], check=True)
    from coreset_curate.common.tables import read_table, table_metadata

    flagged = exclusions(folder / "audit")
    audit_meta = table_metadata(read_table(folder / "audit" / "audit.parquet"))
    relabeled = read_labels_table(folder / "clean_relabel.parquet")
    record = {"name": name, "kind": "audit", "noise_type": noise_type, "noise_rate": rate,
              "flagged_mislabeled": int(len(flagged)),
              "flags": audit_meta["metrics"]["mislabeled_kind"],
              "noisy_share_before": float(audit_meta["metrics"]["true_noise_rate"]),
              "noisy_share_relabeled": float(np.mean(relabeled.labels
                                                     != relabeled.true_labels)),
              "relabeled": relabeled.metadata["relabeled"],
              "left_out_by_relabel": relabeled.metadata["dropped"],
              "wall_s": round(time.perf_counter() - t0, 1), "scoring_s": round(scoring_s, 1),
              **args.info}
    print(json.dumps(record), flush=True)
    return record


def cleaned_teacher(args, noise_type, rate) -> Path:
    """The teacher trained again, as the first one was, on the audit's cleaned labels:
    ``clean`` without ``--relabel`` (the flagged samples left out) into
    ``clean_exclude.parquet``, then ``fp_cleaned/``. Kept like the first teacher."""
    from coreset_curate.training import load_recipe

    folder = RUNS_DIR / tag(noise_type, rate)
    name = f"{tag(noise_type, rate)}_fp_cleaned"
    labels = folder / "clean_exclude.parquet"

    def build() -> dict:
        if not labels.exists():
            subprocess.run([sys.executable, "-m", "coreset_curate", "clean", "--audit",
                            str(folder / "audit"), "--labels", str(folder / "fp" / "labels.parquet"),
                            "--out", str(labels)], check=True)
        cfg = load_recipe(ROOT / "recipes" / "cifar10_resnet20_fp.yaml",
                          [f"data={args.data}", f"epochs={args.fp_epochs}", f"labels={labels}",
                           *args.common])
        summary = train(cfg, folder / "fp_cleaned")
        return {"name": name, "kind": "teacher", "noise_type": noise_type, "noise_rate": rate,
                "cleaned": True, **{k: summary[k] for k in (
                    "epochs", "top1", "best_top1", "wall_s", "train_samples",
                    "cores_oversubscribed")}, **args.info}

    stage(RESULTS, name, folder, build, ("fp_cleaned/model.pt", "clean_exclude.parquet"),
          keep=None if args.results else f"noise_robust/{name}")
    return folder / "fp_cleaned"


def row_name(noise_type, rate, method, fraction, r, cleaning) -> str:
    return f"{tag(noise_type, rate)}_{method}_{round(fraction * 100)}_R{r}_{cleaning}_s0"


def row(args, noise_type, rate, fp_dir: Path, method, fraction, r, cleaning) -> None:
    from equal_cost import noisy_share

    from coreset_curate.training import load_recipe

    t = tag(noise_type, rate)
    name = row_name(noise_type, rate, method, fraction, r, cleaning)
    if RESULTS.has(name):
        return
    if cleaning.startswith("exclude_retrain"):
        fp_dir = RUNS_DIR / t / "fp_cleaned"
    sets = [f"data={args.data}", f"teacher={fp_dir / 'model.pt'}", "teacher_sha256=null",
            f"label_weight={LABEL_WEIGHT}", f"method={method}", f"fraction={fraction}",
            f"reselect_every={r}", "seed=0", *args.common]
    if cleaning == "relabel":
        sets.append(f"labels={RUNS_DIR / t / 'clean_relabel.parquet'}")
    else:
        sets += noise_key(noise_type, rate)
    if cleaning.startswith("exclude"):
        sets.append(f"exclude={RUNS_DIR / t / 'audit'}")
    if cleaning.endswith("_audit"):
        sets.append("audit_every=1")
    recipe = RECIPES.get(method, "cifar10_resnet20_w4a4_full.yaml")
    config = load_recipe(ROOT / "recipes" / recipe, sets)
    out = RUNS_DIR / t / name
    summary = train(config, out)
    record = {"name": name, "kind": "run", "noise_type": noise_type, "noise_rate": rate,
              "cleaning": cleaning, "label_weight": LABEL_WEIGHT,
              **{k: summary[k] for k in ("method", "fraction", "epochs", "R", "seed", "top1",
                                         "best_top1", "wall_s", "scoring_s", "selection_s",
                                         "train_s", "eval_s", "train_samples",
                                         "cores_oversubscribed")},
              "noisy_share": noisy_share(out) if method != "full" else None, **args.info}
    RESULTS.save(record)
    print(json.dumps(record), flush=True)


def stage_paths(name: str) -> list[Path]:
    """What a record's stage or row wrote in ``RUNS_DIR`` (what ``--redo`` deletes)."""
    t, _, rest = name.partition("_")
    folder = RUNS_DIR / t
    return {"fp": [folder / "fp"],
            "audit": [folder / "audit", folder / "rounds", folder / "clean_relabel.parquet"],
            "fp_cleaned": [folder / "fp_cleaned", folder / "clean_exclude.parquet"],
            }.get(rest, [folder / name])


def dependents(names: list[str], results: list) -> list[str]:
    """``names`` and every record made from them: a setting's teacher carries its audit,
    cleaned teacher and rows; the audit carries the cleaned teacher and the rows that clean;
    the cleaned teacher the ``exclude_retrain`` rows."""
    out = list(dict.fromkeys(names))
    for r in results:
        n = r["name"]
        t = n.partition("_")[0]
        cleaning = r.get("cleaning")
        if (f"{t}_fp" in names and n != f"{t}_fp"
                or f"{t}_audit" in names and (n == f"{t}_fp_cleaned" or cleaning not in
                                               (None, "none"))
                or f"{t}_fp_cleaned" in names and (cleaning or "").startswith(
                    "exclude_retrain")):
            out.append(n)
    return list(dict.fromkeys(out))


def render(results: list) -> str:
    runs = [r for r in results if r["kind"] == "run"]
    audits = {(r["noise_type"], r["noise_rate"]): r for r in results if r["kind"] == "audit"}
    lines = ["| noise | method | fraction | cleaning | top-1 | best | noisy share of subsets "
             "| wall (s) | scoring (s) | cores shared |", "|" + " --- |" * 10]
    order = {n: i for i, n in enumerate([None, *[t for t, _ in SETTINGS]])}
    cleanings = {"none": 0, "exclude": 1, "relabel": 2, "exclude_retrain": 3,
                 "exclude_retrain_audit": 4}
    for r in sorted(runs, key=lambda r: (order.get(r["noise_type"], 9), r["noise_rate"] or 0,
                                         r["method"] != "full", cleanings[r["cleaning"]],
                                         r["method"])):
        noise = "clean" if r["noise_type"] is None else f"{r['noise_type']} {r['noise_rate']:.0%}"
        share = "-" if r["noisy_share"] is None else f"{r['noisy_share']:.3f}"
        lines.append(f"| {noise} | {r['method']} | {r['fraction']:g} | {r['cleaning']} | "
                     f"{r['top1']:.2f} | {r['best_top1']:.2f} | {share} | {r['wall_s']:.0f} | "
                     f"{r['scoring_s']:.0f} | {'yes' if r['cores_oversubscribed'] else 'no'} |")
    if audits:
        lines += ["", "| noise | flagged mislabeled | precision | recall | wrong labels before "
                  "| after relabel | relabeled | left out |", "|" + " --- |" * 8]
        for (nt, rate), a in sorted(audits.items(),
                                    key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
            f = a["flags"]
            lines.append(f"| {nt} {rate:.0%} | {a['flagged_mislabeled']} | {f['precision']:.3f} "
                         f"| {f['recall']:.3f} | {a['noisy_share_before']:.3f} | "
                         f"{a['noisy_share_relabeled']:.3f} | {a['relabeled']} | "
                         f"{a['left_out_by_relabel']} |")
    teachers = [r for r in results if r["kind"] == "teacher"]
    if teachers:
        lines += ["", "| teacher's labels | trained on | epochs | top-1 | wall (s) | cores shared |",
                  "|" + " --- |" * 6]
        for r in sorted(teachers, key=lambda r: (order.get(r["noise_type"], 9),
                                                 r["noise_rate"] or 0, bool(r.get("cleaned")))):
            noise = ("clean" if r["noise_type"] is None
                     else f"{r['noise_type']} {r['noise_rate']:.0%}")
            kind = "cleaned (flagged left out)" if r.get("cleaned") else "as given"
            n = r.get("train_samples")
            lines.append(f"| {noise}, {kind} | {f'{n:,}' if n else 'all'} | {r['epochs']} | "
                         f"{r['top1']:.2f} | {r['wall_s']:.0f} | "
                         f"{'yes' if r['cores_oversubscribed'] else 'no'} |")
    from noise_pipeline import render as render_pipeline

    pipeline = render_pipeline(results)
    if pipeline:
        lines += ["", "The pipeline (`coreset-curate curate`), W4A4, against the plain noisy run "
                  "and the clean ceiling of the same seed:", "", pipeline]
    return "\n".join(lines)


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    cli.add_argument("--fp-epochs", type=int, default=8)
    cli.add_argument("--settings", nargs="*", default=[tag(*s) for s in SETTINGS],
                     choices=[tag(*s) for s in SETTINGS])
    cli.add_argument("--no-ceiling", action="store_true", help="skip the clean-label run")
    cli.add_argument("--redo", nargs="+", default=[], metavar="NAME",
                     help="run these records again, and every record made from them (a "
                          "teacher's audit and rows...): they move to "
                          "noise_robust_superseded.json with --reason, their files go")
    cli.add_argument("--reason", default=None, help="why the --redo records are redone")
    cli.add_argument("--pipeline", action="store_true",
                     help="run the pipeline rows and their controls (noise_pipeline.py)")
    cli.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2],
                     help="(--pipeline) the seeds to run")
    cli.add_argument("--methods", nargs="*", default=["small_loss", "loss_mixture",
                                                      "random_epoch", "full"],
                     help="(--pipeline) the students to run")
    args = cli.parse_args()
    global RUNS_DIR, RESULTS
    RUNS_DIR = Path(args.runs_dir) if args.runs_dir else RUNS_DIR
    RESULTS = Results(args.results or RESULTS.path)
    if args.redo:
        RESULTS.supersede(dependents(args.redo, RESULTS.load()), args.reason, RUNS_DIR,
                          paths=stage_paths)
    if rendered(args, RESULTS, render, README, TABLE_START, TABLE_END):
        return
    args.common = ([f"limit_train={args.limit_train}", "limit_test=500", "compile=false"]
                   if args.limit_train else [])
    args.info = start(args)
    if args.pipeline:
        from noise_pipeline import run_all

        args.runs_dir_path = RUNS_DIR
        args.common_keys = ({"limit_train": args.limit_train, "limit_test": 500,
                             "compile": False} if args.limit_train else {})
        run_all(args, RESULTS)
        if not args.results:
            write_between(README, TABLE_START, TABLE_END, render(RESULTS.load()))
        return
    for noise_type, rate in SETTINGS:
        if tag(noise_type, rate) not in args.settings:
            continue
        # the teacher and the audit only where a row still needs them (a setting whose
        # rows are all done needs neither, on a new machine too)
        todo = [spec for spec in ROWS if not RESULTS.has(row_name(noise_type, rate, *spec))]
        audited = RESULTS.has(f"{tag(noise_type, rate)}_audit")
        if todo or not audited:
            fp_dir = teacher(args, noise_type, rate)
            if not audited or any(spec[3] != "none" for spec in todo):
                cleaning_audit(args, noise_type, rate, fp_dir)
            if any(spec[3].startswith("exclude_retrain") for spec in todo):
                cleaned_teacher(args, noise_type, rate)
            for spec in todo:
                row(args, noise_type, rate, fp_dir, *spec)
        if not args.no_ceiling and (noise_type, rate) == SETTINGS[0] \
                and not RESULTS.has(row_name(None, None, "full", 1.0, 4, "none")):
            row(args, None, None, teacher(args, None, None), "full", 1.0, 4, "none")
    if not args.results:
        write_between(README, TABLE_START, TABLE_END, render(RESULTS.load()))


if __name__ == "__main__":
    main()
