"""ACS against its controls on one GPU: CIFAR ResNet-18 W4A4, longer runs than a CPU allows.

Trains a full-precision ResNet-18 teacher, then QAT W4A4 from it with the CPU table's
recipe (``recipes/cifar10_resnet20_w4a4_full.yaml``: KD at T = 1, SGD lr 0.01, batch 128)
for ``--epochs`` epochs, re-selecting every ``--reselect-every``: acs, random_epoch, random
and el2n at 10% (acs and random_epoch with two seeds) and the full data. Every run is
in-process and appended to ``gpu_qat_compare.json`` (under ``$OUT`` when set, else
``benchmarks/results/``) as soon as it ends; runs that would start after ``--budget-s``
are skipped, so a device lease always brings back what finished.

    python benchmarks/gpu_qat_compare.py [--data DIR] [--epochs 30] [--budget-s 330]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from coreset_curate.common.atomic import write_text

ROOT = Path(__file__).resolve().parents[1]
RUNS = [("acs", 0.1, 0), ("random_epoch", 0.1, 0), ("random", 0.1, 0), ("full", 1.0, 0),
        ("el2n", 0.1, 0), ("acs", 0.1, 1), ("random_epoch", 0.1, 1)]
KEYS = ("model", "w_bits", "a_bits", "method", "fraction", "epochs", "R", "seed", "top1",
        "best_top1", "calibrated_top1", "wall_s", "scoring_s", "selection_s", "train_s",
        "eval_s", "train_samples", "test_samples")


def main() -> None:
    import torch

    from coreset_curate.training import load_recipe, run_training

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--model", default="resnet18_cifar")
    parser.add_argument("--epochs-fp", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--reselect-every", type=int, default=5)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="start no run after this many seconds")
    args = parser.parse_args()
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpu_qat_compare.json"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    common = [f"data={args.data}", f"model={args.model}", "compile=false"]
    common += [f"limit_train={args.limit_train}"] if args.limit_train else []
    common += [f"limit_test={args.limit_test}"] if args.limit_test else []
    start = time.perf_counter()
    results = []

    def save() -> None:
        write_text(path, json.dumps(results, indent=2))
    with tempfile.TemporaryDirectory() as runs:
        fp = load_recipe(ROOT / "recipes" / "cifar10_resnet20_fp.yaml",
                         common + [f"epochs={args.epochs_fp}", "batch_size=256"])
        summary = run_training(fp, Path(runs) / "fp")
        teacher = str(Path(runs) / "fp" / "model.pt")
        results.append({"role": "teacher", "device": device,
                        **{k: summary.get(k) for k in KEYS}})
        print(json.dumps(results[-1]), flush=True)
        save()
        for method, fraction, seed in RUNS:
            if time.perf_counter() - start > args.budget_s:
                print(f"budget reached: {method} {fraction} seed {seed} not run", flush=True)
                continue
            config = load_recipe(ROOT / "recipes" / "cifar10_resnet20_w4a4_full.yaml", common + [
                f"teacher={teacher}", "teacher_sha256=null", f"epochs={args.epochs}",
                f"reselect_every={args.reselect_every}", f"method={method}",
                f"fraction={fraction}", f"seed={seed}"])
            summary = run_training(config, Path(runs) / f"{method}_{seed}")
            results.append({"role": "qat", "device": device,
                            **{k: summary.get(k) for k in KEYS}})
            print(json.dumps(results[-1]), flush=True)
            save()
    print(f"wrote {path} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
