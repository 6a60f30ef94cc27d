"""The noisy-labels pipeline (``coreset-curate curate``) on real CIFAR-10: its rows in
benchmarks/results/noise_robust.json, run by ``python benchmarks/noise_robust.py --pipeline``.

For each noise setting and seed s (label noise seed s, training seed s), one curate folder
``benchmarks/runs/noise_robust/pipeline/TAG_sS/``: the teacher on the noisy labels (8
epochs), the audit with it and the calibrated W4A4 student, the cleaned labels (flagged
samples left out), the teacher again on them, then a W4A4 student a method: ``small_loss``
and ``loss_mixture`` (training-step scores, re-selected every epoch), ``random_epoch`` (the
same exclusion, the control at the same cost) at 10%, and ``full`` on the cleaned labels.
The stages before the student are made once a folder; each method's student runs in turn
(the folder's student of the method before is moved to ``student_METHOD/``), and its row's
``wall_s`` counts every stage it stands on (what a user running that method alone pays).

The controls of the goals, the same seed: the plain noisy run (``plain_noisy``: the same
teacher, the W4A4 student on every noisy label, no cleaning) and the clean ceiling
(``plain_clean``: a teacher and a W4A4 student on the true labels). A row of ``kind:
pipeline`` has ``pipeline: true``, ``noise_type``, ``noise_rate``, ``method``, ``fraction``,
``seed``, ``top1``, ``noisy_share`` (of the subsets, by the true labels), ``wall_s`` (all
stages), ``stages`` (each stage's wall time) and ``commit``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from coreset_curate.common.atomic import write_text
from noise_robust import tag
from resumable import KEPT, ROOT, _copy, sha256_of, train

# goals first: 40% symmetric and 20% asymmetric over three seeds, then 20% symmetric
PIPELINE_SETTINGS = [("symmetric", 0.4, (0, 1, 2)), ("asymmetric", 0.2, (0, 1, 2)),
                     ("symmetric", 0.2, (0,))]
# (method, fraction): the selections that keep noise out, their control, then full data
PIPELINE_METHODS = [("small_loss", 0.1), ("loss_mixture", 0.1), ("random_epoch", 0.1),
                    ("full", 1.0)]
FREE_SCORES = {"small_loss", "loss_mixture"}  # methods that read the training steps' scores
LABEL_WEIGHT = 0.5
SHARED = ("teacher", "audit", "clean", "teacher_clean")


def row_name(noise_type, rate, method, fraction, seed) -> str:
    return f"pipe_{tag(noise_type, rate)}_{method}_{round(fraction * 100)}_s{seed}"


def plain_name(noise_type, rate, seed) -> str:
    kind = "plain_clean" if noise_type is None else "plain_noisy"
    return f"{kind}_{tag(noise_type, rate)}_s{seed}"


def _noise(noise_type, rate, seed) -> dict:
    return {} if noise_type is None else {
        "label_noise": {"type": noise_type, "rate": rate, "seed": seed}}


def _curate_config(args, noise_type, rate, seed, method, fraction):
    from coreset_curate.pipeline import CurateConfig

    student = {"label_weight": LABEL_WEIGHT, "method": method, "fraction": fraction,
               "reselect_every": 1, "free_scores": method in FREE_SCORES}
    return CurateConfig(
        teacher="cifar10_resnet20_fp.yaml", student="cifar10_resnet20_w4a4_full.yaml",
        common={"data": args.data, "seed": seed, **_noise(noise_type, rate, seed),
                **args.common_keys},
        teacher_set={"epochs": args.fp_epochs}, student_set=student, clean="exclude",
        folder=str(ROOT / "recipes"))


def _student_method(run: Path) -> str | None:
    """The method of the student run in ``run`` (its ``config.yaml``, written when it
    starts: a killed run says so too), or None where there is none."""
    import yaml

    cfg = run / "config.yaml"
    return yaml.safe_load(cfg.read_text()).get("method") if cfg.exists() else None


def _kept_teacher(args, noise_type, rate, seed) -> Path | None:
    """Where the folder's noisy teacher is kept for the next machine (None for smoke runs):
    run folders do not travel, and the plain noisy run needs that very teacher."""
    if args.results:
        return None
    return KEPT / "noise_robust" / "pipeline" / f"{tag(noise_type, rate)}_s{seed}"


def keep_teacher(folder: Path, kept: Path | None) -> None:
    """Copy the curate folder's teacher (``model.pt``) and its ``curate.json`` entry to
    ``kept`` (commit them), once; a kept teacher that is not this folder's is refused."""
    if kept is None or not (folder / "teacher" / "model.pt").exists():
        return
    entry = json.loads((folder / "curate.json").read_text())["teacher"]
    if (kept / "teacher.json").exists():
        if json.loads((kept / "teacher.json").read_text())["key"] != entry["key"]:
            raise SystemExit(f"{kept}: the kept teacher is another recipe's than "
                             f"{folder}'s: remove one of them")
        return
    _copy(folder / "teacher" / "model.pt", kept / "model.pt")
    write_text(kept / "teacher.json", json.dumps(entry, indent=1, sort_keys=True) + "\n")


def noisy_teacher(folder: Path, kept: Path | None, name: str) -> tuple[Path, float]:
    """The pipeline folder's noisy teacher (its ``model.pt``) and its wall time: from the
    folder, or from the kept copy (its sha256 checked against the stage record) on a new
    machine."""
    if (folder / "teacher" / "model.pt").exists():
        keep_teacher(folder, kept)
        book = json.loads((folder / "curate.json").read_text())
        return folder / "teacher" / "model.pt", book["teacher"]["record"]["wall_s"]
    if kept is not None and (kept / "teacher.json").exists():
        record = json.loads((kept / "teacher.json").read_text())["record"]
        if sha256_of(kept / "model.pt") != record["model_sha256"]:
            raise SystemExit(f"{name}: {kept}/model.pt differs from the sha256 of its "
                             "record: restore it with git")
        return kept / "model.pt", record["wall_s"]
    raise SystemExit(f"{name}: {folder}/teacher is not there: run the setting's pipeline "
                     "rows first (they train it)")


def pipeline_rows(args, results, noise_type, rate, seed) -> None:
    """Every method's row of one (setting, seed), in one curate folder."""
    from coreset_curate.pipeline import curate

    todo = [(m, f) for m, f in PIPELINE_METHODS if m in args.methods
            and not results.has(row_name(noise_type, rate, m, f, seed))]
    if not todo:
        return
    out = args.runs_dir_path / "pipeline" / f"{tag(noise_type, rate)}_s{seed}"
    for method, fraction in todo:
        name = row_name(noise_type, rate, method, fraction, seed)
        made = _student_method(out / "student")
        if made not in (None, method):  # another method's student: keep it apart first
            for stage in ("student", "final_audit"):
                if (out / stage).exists():
                    dst = out / f"{stage}_{made}"
                    shutil.rmtree(dst, ignore_errors=True)
                    (out / stage).rename(dst)
        print(f"{name}: curate into {out}", flush=True)
        summary = curate(_curate_config(args, noise_type, rate, seed, method, fraction), out,
                         overwrite=True)
        keep_teacher(out, _kept_teacher(args, noise_type, rate, seed))
        stages = summary["stages"]
        walls = {k: (v or {}).get("wall_s") for k, v in stages.items()}
        record = {"name": name, "kind": "pipeline", "pipeline": True,
                  "noise_type": noise_type, "noise_rate": rate, "method": method,
                  "fraction": fraction, "seed": seed, "label_weight": LABEL_WEIGHT,
                  "top1": summary["student_top1"],
                  "best_top1": stages["student"].get("best_top1"),
                  "noisy_share": summary["student_noisy_share"],
                  "wall_s": round(sum(w or 0.0 for w in walls.values()), 1), "stages": walls,
                  "estimated_noise_rate": summary["estimated_noise_rate"],
                  "wrong_labels_before": summary["wrong_labels_before"],
                  "wrong_labels_after": summary["wrong_labels_after"],
                  "teacher_top1": summary["teacher_top1"],
                  "teacher_clean_top1": summary["teacher_clean_top1"],
                  "cores_oversubscribed": any((v or {}).get("cores_oversubscribed")
                                              for v in stages.values()),
                  **args.info}
        results.save(record)
        print(json.dumps(record), flush=True)


def plain_row(args, results, noise_type, rate, seed) -> None:
    """The control of one (setting, seed): the W4A4 student on every label as given
    (noisy), distilled from the pipeline folder's own noisy teacher; for ``noise_type``
    None, a teacher and a student on the true labels."""
    from equal_cost import noisy_share

    from coreset_curate.training import load_recipe

    name = plain_name(noise_type, rate, seed)
    if results.has(name):
        return
    folder = args.runs_dir_path / "pipeline" / f"{tag(noise_type, rate)}_s{seed}"
    t0 = time.perf_counter()
    if noise_type is None:
        fp = load_recipe(ROOT / "recipes" / "cifar10_resnet20_fp.yaml", [
            f"data={args.data}", f"epochs={args.fp_epochs}", f"seed={seed}", *args.common])
        teacher_wall = train(fp, folder / "teacher")["wall_s"]
        teacher = folder / "teacher" / "model.pt"
    else:  # the pipeline's teacher, its wall time from the stage record
        teacher, teacher_wall = noisy_teacher(folder, _kept_teacher(args, noise_type, rate,
                                                                    seed), name)
    sets = [f"data={args.data}", f"teacher={teacher}",
            "teacher_sha256=null", f"label_weight={LABEL_WEIGHT}", "method=full",
            "fraction=1.0", f"seed={seed}", *args.common]
    if noise_type is not None:
        sets.append("label_noise={type: %s, rate: %s, seed: %d}" % (noise_type, rate, seed))
    config = load_recipe(ROOT / "recipes" / "cifar10_resnet20_w4a4_full.yaml", sets)
    out = folder / "plain_student"
    summary = train(config, out)
    record = {"name": name, "kind": "plain", "pipeline": False, "noise_type": noise_type,
              "noise_rate": rate, "method": "full", "fraction": 1.0, "seed": seed,
              "label_weight": LABEL_WEIGHT, "top1": summary["top1"],
              "best_top1": summary["best_top1"], "noisy_share": noisy_share(out),
              "wall_s": round(summary["wall_s"] + teacher_wall, 1),
              "stages": {"teacher": teacher_wall, "student": summary["wall_s"]},
              "cores_oversubscribed": summary["cores_oversubscribed"],
              "this_call_s": round(time.perf_counter() - t0, 1), **args.info}
    results.save(record)
    print(json.dumps(record), flush=True)


def run_all(args, results) -> None:
    """Every pipeline row and control, in goal order; finished ones are skipped."""
    done_seeds = set()
    for noise_type, rate, seeds in PIPELINE_SETTINGS:
        if tag(noise_type, rate) not in args.settings:
            continue
        for seed in seeds:
            if seed not in args.seeds:
                continue
            pipeline_rows(args, results, noise_type, rate, seed)
            plain_row(args, results, noise_type, rate, seed)
            done_seeds.add(seed)
    for seed in sorted(done_seeds):
        plain_row(args, results, None, None, seed)


def render(results: list) -> str:
    """The pipeline rows beside their controls: top-1 per seed, the share of the noise's
    cost given back, subsets' noisy share and wall time against the plain noisy run."""
    rows = [r for r in results if r.get("kind") in ("pipeline", "plain")]
    if not rows:
        return ""
    by = {(r["kind"], r["noise_type"], r["noise_rate"], r["method"], r["seed"]): r
          for r in rows}
    lines = ["| noise | method | fraction | seeds | top-1 mean | noise cost given back "
             "(mean, per seed) | noisy share of subsets | wall (s) | x plain noisy wall |",
             "|" + " --- |" * 9]
    for noise_type, rate, seeds in PIPELINE_SETTINGS:
        for method, fraction in PIPELINE_METHODS:
            got = [(s, by.get(("pipeline", noise_type, rate, method, s))) for s in seeds]
            got = [(s, r) for s, r in got if r is not None]
            if not got:
                continue
            back, ratio = [], []
            for s, r in got:
                noisy = by.get(("plain", noise_type, rate, "full", s))
                clean = by.get(("plain", None, None, "full", s))
                if noisy and clean and clean["top1"] > noisy["top1"]:
                    back.append((r["top1"] - noisy["top1"]) / (clean["top1"] - noisy["top1"]))
                if noisy:
                    ratio.append(r["wall_s"] / noisy["wall_s"])
            mean = sum(r["top1"] for _, r in got) / len(got)
            share = [r["noisy_share"] for _, r in got if r["noisy_share"] is not None]
            back_s = (f"{sum(back) / len(back):.0%} ({', '.join(f'{b:.0%}' for b in back)})"
                      if back else "-")
            share_s = f"{sum(share) / len(share):.3f}" if share else "-"
            wall = sum(r["wall_s"] for _, r in got) / len(got)
            ratio_s = f"{sum(ratio) / len(ratio):.2f}" if ratio else "-"
            seeds_s = ",".join(str(s) for s, _ in got)
            lines.append(f"| {noise_type} {rate:.0%} | {method} | {fraction:g} | {seeds_s} | "
                         f"{mean:.2f} | {back_s} | {share_s} | {wall:.0f} | {ratio_s} |")
    return "\n".join(lines)
