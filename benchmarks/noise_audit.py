"""Noise audit on real CIFAR-10: our flags against cleanlab's on the same model's outputs.

For each setting (20% and 40% symmetric, 20% asymmetric noise; labels flipped by
``label_noise`` in the trainer, seed 0):

1. a full-precision ResNet-20 trained from scratch on the noisy labels (``--fp-epochs``,
   short on purpose: a model trained to memorise its labels cannot audit them);
2. W4A4 QAT from it on all the data (``acs`` at fraction 1.0, so every epoch is scored:
   ``--qat-epochs`` scoring rounds, the first on the calibrated student, and with
   ``score_final`` one more round of the finished student);
3. ``audit`` of those rounds (ours: ``confident_joint`` and ``gap`` counts; also the
   finished student's round alone, and the rounds without it) against cleanlab's
   ``find_label_issues`` (default filter) and its self-confidence ranking on the softmax of
   the same finished student (eval transform), precision/recall/F1/AUROC each.

Then, at 20% symmetric noise, QAT at 10% with ``acs`` and with ``random_epoch`` from the
same noisy teacher (the CPU table's recipe), with their test top-1 and the share of noisy
samples in each epoch's subset.

Every run lives in ``benchmarks/runs/noise_*`` and resumes from its last epoch; finished
settings are skipped (``--reaudit`` recomputes their audits without training;
``--noise-seed N --settings asymmetric-0.2`` adds a setting with other flips). Results:
``benchmarks/results/noise_audit.json``. cleanlab is a benchmark requirement only:
``pip install -r benchmarks/requirements.txt``.

    nohup python benchmarks/noise_audit.py > noise.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from coreset_curate.common.atomic import write_text
from readme_table import write_between

ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = ROOT / "benchmarks" / "runs"
RESULTS = ROOT / "benchmarks" / "results" / "noise_audit.json"
SETTINGS = [("symmetric", 0.2), ("symmetric", 0.4), ("asymmetric", 0.2)]


def _key(r: dict) -> tuple:
    return r["noise_type"], r["noise_rate"], r.get("kind", "audit"), r.get("noise_seed", 0)


def load_results(path: Path) -> list:
    return json.loads(path.read_text()) if path.exists() else []


def save_results(path: Path, results: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(results, indent=2))


README = ROOT / "docs" / "benchmarks" / "noise-audit.md"
TABLE_START, TABLE_END = "<!-- noise-table:start -->", "<!-- noise-table:end -->"


def render(results: list) -> str:
    """The README's tables: the audits side by side, then the 10% subset runs."""
    def prf(m: dict) -> str:
        return " | ".join(f"{m[k]:.3f}" for k in ("precision", "recall", "f1", "auroc"))

    lines = ["| noise | rate | noise seed | student top-1 | ours P | ours R | ours F1 | ours AUROC "
             "| cleanlab P | cleanlab R | cleanlab F1 | cleanlab AUROC "
             "| ours, self-confidence suspicion F1 | ours, gap count F1 "
             "| ours, finished model alone F1 |",
             "|" + " --- |" * 15]
    for r in (r for r in results if r.get("kind", "audit") == "audit"):
        lines.append(f"| {r['noise_type']} | {r['noise_rate']:.0%} | {r.get('noise_seed', 0)} | "
                     f"{r['qat_top1']:.2f} | "
                     f"{prf(r['ours'])} | {prf(r['cleanlab'])} | {r['ours_prob']['f1']:.3f} | "
                     f"{r['ours_gap']['f1']:.3f} | {r['ours_final_round']['f1']:.3f} |")
    subsets = [r for r in results if r.get("kind", "").startswith("subset_")]
    if subsets:
        lines += ["", "| method (10%, 20% symmetric noise) | top-1 final | top-1 best "
                  "| noisy share of the subsets (mean) | per selection | wall (s) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in subsets:
            per = ", ".join(f"{x:.2f}" for x in r["noisy_share_per_epoch"][::r["R"]])
            lines.append(f"| {r['method']} | {r['top1']:.2f} | {r['best_top1']:.2f} | "
                         f"{r['noisy_share_mean']:.3f} | {per} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def write_readme_table(results: list) -> None:
    write_between(README, TABLE_START, TABLE_END, render(results))


def train(config, out: Path) -> dict:
    from coreset_curate.training import run_training

    resume = (out / "last.pt").exists()
    summary = run_training(config, out, resume=resume, overwrite=not resume)
    return summary


def cleanlab_flags(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    flags = find_label_issues(labels, probs)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    return np.asarray(flags, bool), 1.0 - np.asarray(quality)


def audit_entry(run: Path, args) -> dict:
    """Our audit and cleanlab's on a finished QAT run of the noisy labels.

    Ours reads every scoring round: those before each epoch and the finished model's
    (``score_final``, with the softmax, so the suspicion is ``channel``); cleanlab gets the
    finished model's softmax. ``ours_prob`` is ours with the self-confidence suspicion,
    ``ours_final_round`` ours on the finished model's round alone.
    """
    import torch

    from coreset_curate.labels.audit import audit, flag_metrics
    from coreset_curate.data import default_transforms, load_data
    from coreset_curate.tasks.classification.models import create_model
    from coreset_curate.labels.noise import read_labels
    from coreset_curate.quant import quantize_model
    from coreset_curate.training import load_checkpoint
    from coreset_curate.training import predict_logits

    rounds = sorted(str(p) for p in (run / "scores").glob("epoch_*.parquet"))
    final = run / "scores" / f"epoch_{args.qat_epochs:04d}.parquet"
    if str(final) not in rounds:
        raise SystemExit(f"{final} is missing: the run did not score its finished model")
    labels_path = run / "labels.parquet"
    ids, noisy, true, _ = read_labels(labels_path)
    entry = {"realised_noise": float((noisy != true).mean()), "rounds": len(rounds),
             "train_samples": len(ids)}
    for count in ("confident_joint", "gap"):
        res = audit(rounds, count=count, true_labels=labels_path)
        entry["ours" if count == "confident_joint" else "ours_gap"] = res.metrics["flag"]
        entry.setdefault("ours_mislabeled_kind", res.metrics["mislabeled_kind"])
    entry["ours_suspicion"] = res.suspicion  # "channel": the final round has the softmax
    entry["ours_prob"] = audit(rounds, suspicion="prob", true_labels=labels_path
                               ).metrics["flag"]
    entry["ours_final_round"] = audit([str(final)], true_labels=labels_path).metrics["flag"]
    # cleanlab on the softmax of the same finished student
    train_data = load_data(args.data, "train")
    if args.limit_train:
        train_data = train_data.subset(np.arange(min(args.limit_train, len(train_data))))
    _, eval_tf = default_transforms(train_data)
    student = create_model("resnet20", num_classes=train_data.num_classes)
    quantize_model(student, 4, 4)
    load_checkpoint(student, run / "model.pt")
    probs = torch.softmax(predict_logits(student, train_data, eval_tf, batch_size=256),
                          1).numpy()
    order = np.argsort(train_data.sample_ids)
    assert np.array_equal(train_data.sample_ids[order], ids)
    cl_flags, cl_susp = cleanlab_flags(noisy, probs[order])
    entry["cleanlab"] = flag_metrics(cl_flags, cl_susp, noisy != true)
    return entry


def main() -> None:
    import torch

    from coreset_curate.labels.audit import audit
    from coreset_curate.training import load_recipe

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--fp-epochs", type=int, default=8)
    parser.add_argument("--qat-epochs", type=int, default=4)
    parser.add_argument("--limit-train", type=int, default=None, help="smoke runs only")
    parser.add_argument("--limit-test", type=int, default=None, help="smoke runs only")
    parser.add_argument("--runs-dir", default=str(RUNS_DIR))
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--subset-epochs", type=int, default=None,
                        help="epochs of the 10%% runs (default: the recipe's)")
    parser.add_argument("--skip-subsets", action="store_true",
                        help="only the audits, not the 10%% acs/random_epoch runs")
    parser.add_argument("--noise-seed", type=int, default=0,
                        help="seed of the label noise (runs of another seed live beside)")
    parser.add_argument("--settings", nargs="*",
                        default=[f"{t}-{r:g}" for t, r in SETTINGS],
                        choices=[f"{t}-{r:g}" for t, r in SETTINGS])
    parser.add_argument("--reaudit", action="store_true",
                        help="recompute the audits of finished settings (no training; scores "
                             "a finished model that has no final round yet)")
    parser.add_argument("--render", action="store_true",
                        help="only write the results into the README's table")
    args = parser.parse_args()
    if args.render:
        results = load_results(Path(args.results))
        write_readme_table(results)
        print(render(results))
        return
    runs, results_path = Path(args.runs_dir), Path(args.results)
    common = [f"data={args.data}"]
    common += [f"limit_train={args.limit_train}"] if args.limit_train else []
    common += [f"limit_test={args.limit_test}"] if args.limit_test else []
    common += ["compile=false"] if args.limit_train else []  # smoke runs: no compile wait
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    done = {_key(r) for r in load_results(results_path)}
    seed = args.noise_seed
    for noise_type, rate in SETTINGS:
        key = (noise_type, rate, "audit", seed)
        if f"{noise_type}-{rate:g}" not in args.settings or (key in done and not args.reaudit):
            continue
        tag = f"noise_{noise_type[:3]}{round(rate * 100)}" + (f"_seed{seed}" if seed else "")
        noise = f"label_noise={{type: {noise_type}, rate: {rate}, seed: {seed}}}"
        t0 = time.perf_counter()
        fp_cfg = load_recipe(ROOT / "recipes" / "cifar10_resnet20_fp.yaml",
                             common + [noise, f"epochs={args.fp_epochs}"])
        qat_cfg = load_recipe(ROOT / "recipes" / "cifar10_resnet20_w4a4_full.yaml", common + [
            noise, f"teacher={runs / tag / 'fp' / 'model.pt'}", "teacher_sha256=null",
            f"epochs={args.qat_epochs}", "method=acs", "fraction=1.0", "reselect_every=1",
            "score_final=true"])
        if key in done:  # --reaudit: the runs are finished; only the final round may be new
            old = next(r for r in load_results(results_path) if _key(r) == key)
            # what the training measured stays; every audit figure is computed again
            entry = {k: old[k] for k in ("kind", "noise_type", "noise_rate", "fp_epochs",
                                         "fp_top1", "qat_epochs", "qat_top1", "wall_s")}
            entry["noise_seed"] = seed
            train(qat_cfg, runs / tag / "qat")  # scores the finished model if not yet done
        else:
            fp = train(fp_cfg, runs / tag / "fp")
            qat = train(qat_cfg, runs / tag / "qat")
            entry = {"kind": "audit", "noise_type": noise_type, "noise_rate": rate,
                     "noise_seed": seed, "fp_epochs": args.fp_epochs, "fp_top1": fp["top1"],
                     "qat_epochs": args.qat_epochs, "qat_top1": qat["top1"]}
        entry.update(audit_entry(runs / tag / "qat", args))
        if "wall_s" not in entry:
            entry["wall_s"] = round(time.perf_counter() - t0, 1)
        entry.update(machine=machine, date=time.strftime("%Y-%m-%d"))
        results = [r for r in load_results(results_path) if _key(r) != key] + [entry]
        results.sort(key=lambda r: (r.get("kind", "audit") != "audit", _key(r)[3],
                                    SETTINGS.index((r["noise_type"], r["noise_rate"]))))
        save_results(results_path, results)
        print(json.dumps({k: entry[k] for k in ("noise_type", "noise_rate", "ours", "cleanlab")}),
              flush=True)

    if args.skip_subsets or seed != 0:
        return
    tag = "noise_sym20"
    for method in ("acs", "random_epoch"):
        if ("symmetric", 0.2, f"subset_{method}", 0) in done:
            continue
        cfg = load_recipe(ROOT / "recipes" / f"cifar10_resnet20_w4a4_{method}_10.yaml", common + [
            "label_noise={type: symmetric, rate: 0.2, seed: 0}",
            f"teacher={runs / tag / 'fp' / 'model.pt'}", "teacher_sha256=null"]
            + ([f"epochs={args.subset_epochs}"] if args.subset_epochs else []))
        out = runs / tag / f"qat_{method}_10"
        summary = train(cfg, out)
        res = audit(sorted(str(p) for p in (runs / tag / "qat" / "scores").glob("epoch_*.parquet")),
                    true_labels=out / "labels.parquet", index=out / "index.parquet")
        shares = [s["truly_noisy"] for s in res.subset_share]
        entry = {"kind": f"subset_{method}", "noise_type": "symmetric", "noise_rate": 0.2,
                 "method": method, "fraction": 0.1, "epochs": summary["epochs"],
                 "R": summary["R"], "top1": summary["top1"], "best_top1": summary["best_top1"],
                 "noisy_share_per_epoch": shares, "noisy_share_mean": float(np.mean(shares)),
                 "wall_s": summary["wall_s"], "machine": machine,
                 "date": time.strftime("%Y-%m-%d")}
        results = load_results(results_path)
        results.append(entry)
        save_results(results_path, results)
        print(json.dumps({k: entry[k] for k in ("method", "top1", "noisy_share_mean")}),
              flush=True)


if __name__ == "__main__":
    main()
