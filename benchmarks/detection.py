"""Detection on the CPU set: RetinaNet (ResNet-18 FPN) QAT with adaptive coreset selection.

On the COCO-layout set made from the real CIFAR-10 images (``cifar10-det/`` at the repo's
root; made here when absent, as the README makes it: 4,000 training canvases from the
train split, seed 0, and 500 test canvases from the test split, seed 1):

0. the pretrained backbone: torchvision's ResNet-18 as a CIFAR-10 classifier,
   ``recipes/cifar10det_backbone_resnet18.yaml`` (record ``method: backbone``, ``top1``);
1. the full-precision teacher from it, ``recipes/cifar10det_retinanet_r18_fp.yaml``;
2. the scoring throughput: a W4A4 student made from the teacher and calibrated, timed
   over 512 training images (after one warm-up batch) in four ways: a bare forward
   pass through transform, backbone, head and anchors (no loss, no scores), the
   ``score_detections`` round without a reference (EVS, loss, margin...), the round with
   the full-precision reference (DS, a second forward pass: a run's first round), and a
   round with the reference's outputs kept from the one before (a run's later rounds);
3. W4A4 QAT from that teacher (``recipes/cifar10det_retinanet_r18_w4a4_full.yaml``):
   at 10% ``acs`` (the recipe's R) and ``random_epoch`` (R = 1: a new subset every
   epoch at no scoring cost), seeds 0, 1 and 2, then ``full``, then the 30% pair
   (seeds 0, 1 and 2).

Every run lives in ``benchmarks/runs/detection/`` and resumes from its last epoch;
finished rows are skipped, so the command below continues where it stopped. Run folders
stay on the machine that made them and the teacher is too large for git (about 50 MB), so
on a new machine with rows still to run the backbone and the teacher are trained again
(about 70 minutes) and must reproduce their records' top-1 and AP to the last digit, or
the benchmark stops and names the ``--redo`` to run. Results:
``benchmarks/results/detection.json`` (a list of records: ``method`` (``fp`` for the
teacher), ``fraction``, ``seed``, ``ap``, ``ap50``, ``ap75``, ``wall_s`` with scoring
included, ``scoring_s``, ``cores_oversubscribed``; and one ``kind: throughput``
record), rendered into docs/benchmarks/detection.md::

    nohup python benchmarks/detection.py > detection.log 2>&1 &
    python benchmarks/detection.py --render

``--redo NAME... --reason TEXT`` moves finished records to ``detection_superseded.json``
and deletes their run folders (``fp`` and ``throughput`` are names too; a W4A4 row trained
from a superseded teacher must go with it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from readme_table import write_between
from resumable import ROOT, Results, parser, rendered, stage, start, train

DATA = ROOT / "cifar10-det"
RUNS_DIR = ROOT / "benchmarks" / "runs" / "detection"
RESULTS = Results(ROOT / "benchmarks" / "results" / "detection.json")
README = ROOT / "docs" / "benchmarks" / "detection.md"
TABLE_START, TABLE_END = "<!-- detection:start -->", "<!-- detection:end -->"
BACKBONE_RECIPE = ROOT / "recipes" / "cifar10det_backbone_resnet18.yaml"
FP_RECIPE = ROOT / "recipes" / "cifar10det_retinanet_r18_fp.yaml"
QAT_RECIPE = ROOT / "recipes" / "cifar10det_retinanet_r18_w4a4_full.yaml"
# (method, fraction, R, seed) in the order they run; R None: the recipe's
# (the 10% pair's three seeds first: a gain is judged against their spread; full, ten
# times a 10% row's training, after them; the 30% pair's seeds last, seed 0 first so that
# one pair lands before the others)
ROWS = [("acs", 0.1, None, 0), ("random_epoch", 0.1, 1, 0),
        ("acs", 0.1, None, 1), ("random_epoch", 0.1, 1, 1),
        ("acs", 0.1, None, 2), ("random_epoch", 0.1, 1, 2), ("full", 1.0, None, 0),
        ("acs", 0.3, None, 0), ("random_epoch", 0.3, 1, 0),
        ("acs", 0.3, None, 1), ("random_epoch", 0.3, 1, 1),
        ("acs", 0.3, None, 2), ("random_epoch", 0.3, 1, 2)]
KEYS = ("method", "fraction", "epochs", "R", "seed", "ap", "ap50", "ap75", "best_ap",
        "wall_s", "scoring_s", "selection_s", "train_s", "eval_s", "train_samples",
        "cores_oversubscribed")


def make_data() -> None:
    from coreset_curate.data import load_data
    from coreset_curate.tasks.detection import make_coco

    cifar = ROOT.parent / "shared" / "data" / "cifar10"
    for split, count, seed in (("train", 4000, 0), ("test", 500, 1)):
        if not (DATA / "annotations" / f"instances_{split}.json").exists():
            print(f"making {DATA} {split}: {count} canvases, seed {seed}", flush=True)
            make_coco(load_data(str(cifar), split), DATA, split, count=count, seed=seed)


def backbone(args) -> Path:
    """The CIFAR-10 classifier the teacher starts from (its run folder is not kept: on a
    new machine it is trained again and must reproduce its record's top-1)."""
    from coreset_curate.training import load_recipe

    out = RUNS_DIR / "backbone"

    def build() -> dict:
        sets = [f"data={ROOT.parent / 'shared' / 'data' / 'cifar10'}", *args.threads,
                *([f"limit_train={args.limit_train}", "epochs=1"] if args.limit_train else [])]
        summary = train(load_recipe(BACKBONE_RECIPE, sets), out)
        return {"name": "backbone", "kind": "backbone", "method": "backbone",
                **{k: summary[k] for k in ("model", "epochs", "top1", "wall_s",
                                           "cores_oversubscribed")}, **args.info}

    return stage(RESULTS, "backbone", out, build, ("model.pt",)) / "model.pt"


def teacher(args) -> Path:
    """The full-precision RetinaNet (about 50 MB, too large to keep in git: on a new
    machine it is trained again, from the backbone, and must reproduce its record's AP)."""
    from coreset_curate.training import load_recipe

    out = RUNS_DIR / "fp"

    def build() -> dict:
        kwargs = {**load_recipe(FP_RECIPE).model_kwargs,
                  "backbone_weights": str(backbone(args))}
        summary = train(load_recipe(FP_RECIPE, [f"model_kwargs={json.dumps(kwargs)}",
                                                *args.common, *args.threads]), out)
        return {"name": "fp", "kind": "run", **{k: summary.get(k) for k in KEYS},
                "method": "fp", "scoring_s": 0.0, **args.info}

    return stage(RESULTS, "fp", out, build, ("model.pt",)) / "model.pt"


def throughput(args, teacher_pt: Path) -> None:
    """Images a second: bare forward, a scoring round, a round with the reference."""
    if RESULTS.has("throughput"):
        return
    import numpy as np
    import torch

    from coreset_curate.data import load_data
    from coreset_curate.tasks.detection import create_detector
    from coreset_curate.tasks.detection.scores import head_outputs, score_detections
    from coreset_curate.tasks.detection.data import batch_of, calibration_batches
    from coreset_curate.quant import calibrate_, quantize_model
    from coreset_curate.training import load_recipe

    cfg = load_recipe(QAT_RECIPE, args.common)
    if args.threads:
        torch.set_num_threads(int(args.threads[0].split("=")[1]))
    data = load_data(cfg.data, "train")
    data = data.subset(np.arange(min(512, len(data))))
    ref = create_detector(cfg.model, data.num_classes, **cfg.model_kwargs)
    ref.load_state_dict(torch.load(teacher_pt, weights_only=True))
    ref.eval()
    student = create_detector(cfg.model, data.num_classes, **cfg.model_kwargs)
    student.load_state_dict(ref.state_dict())
    quantize_model(student, cfg.w_bits, cfg.a_bits, first_last=cfg.first_last)
    calibrate_(student, calibration_batches(data, range(64)))
    student.eval()
    bs = 16

    def bare():
        with torch.no_grad():
            for s in range(0, len(data), bs):
                head_outputs(student, batch_of(data, range(s, min(s + bs, len(data))))[0])

    timings, cache = {}, {}
    head_outputs(student, batch_of(data, range(bs))[0])  # warm-up
    for name, fn in (("bare_forward", bare),
                     ("scoring", lambda: score_detections(student, data, batch_size=bs)),
                     ("scoring_with_reference",  # a run's first round: fills the cache
                      lambda: score_detections(student, data, ref, batch_size=bs,
                                               reference_cache=cache)),
                     ("scoring_with_cached_reference",  # its later rounds
                      lambda: score_detections(student, data, ref, batch_size=bs,
                                               reference_cache=cache))):
        t0 = time.perf_counter()
        fn()
        timings[name] = len(data) / (time.perf_counter() - t0)
        print(f"{name}: {timings[name]:.1f} images/s", flush=True)
    from coreset_curate.common.cores import check_cores

    RESULTS.save({"name": "throughput", "kind": "throughput", "images": len(data),
                 "batch_size": bs, **{f"{k}_images_per_s": round(v, 2)
                                      for k, v in timings.items()},
                 "scoring_vs_bare": round(timings["scoring"] / timings["bare_forward"], 3),
                 "with_reference_vs_bare": round(timings["scoring_with_reference"]
                                                 / timings["bare_forward"], 3),
                 "with_cached_reference_vs_bare": round(
                     timings["scoring_with_cached_reference"] / timings["bare_forward"], 3),
                 "cores_oversubscribed": bool(check_cores()), **args.info})


def row_name(method: str, fraction: float, r) -> str:
    from coreset_curate.training import load_recipe

    r = r or load_recipe(QAT_RECIPE).reselect_every
    return f"w4a4_{method}_{round(fraction * 100)}_R{r}"


def row(args, teacher_pt: Path, method: str, fraction: float, r, seed: int) -> None:
    from coreset_curate.training import load_recipe

    name = f"{row_name(method, fraction, r)}_s{seed}"
    if RESULTS.has(name):
        return
    sets = [f"teacher={teacher_pt}", f"method={method}", f"fraction={fraction}",
            f"seed={seed}", *([f"reselect_every={r}"] if r else []), *args.common,
            *args.threads]
    config = load_recipe(QAT_RECIPE, sets)
    summary = train(config, RUNS_DIR / name)
    record = {"name": name, "kind": "run", **{k: summary[k] for k in KEYS}, **args.info}
    RESULTS.save(record)
    print(json.dumps(record), flush=True)


def render(results: list) -> str:
    runs = sorted((r for r in results if r["kind"] == "run"),
                  key=lambda r: (r["method"] != "fp", -r["fraction"], r["method"], r["seed"]))
    lines = ["| method | fraction | R | seed | AP | AP50 | AP75 | best AP | wall (s) | "
             "scoring (s) | cores shared |", "|" + " --- |" * 11]
    for r in runs:
        lines.append(f"| {r['method']} | {r['fraction']:g} | {r['R'] if r['method'] != 'fp' else '-'}"
                     f" | {r['seed']} | {r['ap']:.3f} | {r['ap50']:.3f} | {r['ap75']:.3f} | "
                     f"{r['best_ap']:.3f} | {r['wall_s']:.0f} | {r['scoring_s']:.0f} | "
                     f"{'yes' if r['cores_oversubscribed'] else 'no'} |")
    for b in (r for r in results if r["kind"] == "backbone"):
        lines += ["", f"Backbone: torchvision ResNet-18 trained {b['epochs']} epochs as a "
                  f"CIFAR-10 classifier, top-1 {b['top1']:.2f}% ({b['wall_s']:.0f} s; cores "
                  f"shared: {'yes' if b['cores_oversubscribed'] else 'no'})."]
    for t in (r for r in results if r["kind"] == "throughput"):
        lines += ["", f"Scoring throughput of the calibrated W4A4 student on {t['images']} "
                  f"training images (batches of {t['batch_size']}): bare forward "
                  f"{t['bare_forward_images_per_s']:.1f} images/s, scoring round "
                  f"{t['scoring_images_per_s']:.1f} ({t['scoring_vs_bare']:.2f}x), with the "
                  f"reference for DS {t['scoring_with_reference_images_per_s']:.1f} "
                  f"({t['with_reference_vs_bare']:.2f}x; a run's first round), with the "
                  f"reference's outputs kept from it "
                  f"{t['scoring_with_cached_reference_images_per_s']:.1f} "
                  f"({t['with_cached_reference_vs_bare']:.2f}x; later rounds); cores shared: "
                  f"{'yes' if t['cores_oversubscribed'] else 'no'}."]
    return "\n".join(lines)


def main() -> None:
    import torch

    cli = parser(__doc__)
    cli.add_argument("--redo", nargs="+", default=[], metavar="NAME",
                     help="run these rows again from scratch: their records move to "
                          "detection_superseded.json with --reason, their run folders go")
    cli.add_argument("--reason", default=None, help="why the --redo rows are redone")
    cli.add_argument("--threads", type=int, default=None,
                     help="num_threads of every run (default: torch's); recorded")
    args = cli.parse_args()
    global RUNS_DIR, RESULTS
    RUNS_DIR = Path(args.runs_dir) if args.runs_dir else RUNS_DIR
    RESULTS = Results(args.results or RESULTS.path)
    if args.redo:
        RESULTS.supersede(args.redo, args.reason, RUNS_DIR)
    if rendered(args, RESULTS, render, README, TABLE_START, TABLE_END):
        return
    args.common = ([f"limit_train={args.limit_train}", "limit_test=50", "epochs=2"]
                   if args.limit_train else [])
    args.info = start(args, threads=args.threads or torch.get_num_threads())
    args.threads = [f"num_threads={args.threads}"] if args.threads else []
    make_data()
    todo = [spec for spec in ROWS if not RESULTS.has(f"{row_name(*spec[:3])}_s{spec[3]}")]
    if todo or not RESULTS.has("throughput") or not RESULTS.has("fp"):
        teacher_pt = teacher(args)  # built again on a new machine, only when needed
        throughput(args, teacher_pt)
        for method, fraction, r, seed in todo:
            row(args, teacher_pt, method, fraction, r, seed)
    if not args.results:
        write_between(README, TABLE_START, TABLE_END, render(RESULTS.load()))


if __name__ == "__main__":
    main()
