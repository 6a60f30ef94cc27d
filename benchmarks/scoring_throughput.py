"""Scoring throughput: the whole scoring pass against a bare forward pass of the same
student through the same data path, side by side in one run.

* bare: ``iter_batches`` -> eval transform -> ``student(x)`` under ``torch.inference_mode``;
* score: ``score_table(student, data, cached_reference_outputs, ...)`` (every score of
  the table, with the reference's outputs read from the cache as in every scoring round
  after the first).

CPU: CIFAR ResNet-20 W4A4 on real CIFAR-10 train, batch 256; on a GPU: CIFAR ResNet-18
W4A4, batch 1024 (``--bf16`` runs both passes under bfloat16 autocast). The student is the full-precision weights (``--checkpoint``, default: fresh ones)
quantized and calibrated; throughput does not depend on the weights' values. Each pass
runs ``--repeats`` times alternately and the best of each is kept. Appends to
``benchmarks/results/scoring_throughput.json`` (or ``$OUT/scoring_throughput.json``).

    python benchmarks/scoring_throughput.py [--limit 10000] [--checkpoint fp.pt]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from results_file import append_record

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from coreset_curate.data import (default_transforms, inference_batch_size, iter_batches,
                                     load_data)
    from coreset_curate.tasks.classification.models import create_model
    from coreset_curate.quant import quantize_model
    from coreset_curate.scoring.refcache import cached_reference
    from coreset_curate.scoring.scores import score_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--model", default=None, help="resnet20 on CPU, resnet18_cifar on GPU")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N training images")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true",
                        help="both passes under bfloat16 autocast (as score --bf16)")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    model_name = args.model or ("resnet18_cifar" if gpu else "resnet20")
    batch = args.batch_size or inference_batch_size(device)

    data = load_data(args.data, "train")
    if args.limit:
        data = data.subset(np.arange(min(args.limit, len(data))))
    _, eval_tf = default_transforms(data)
    if gpu:
        data.images = data.images.to(device)  # decoded once, kept on the GPU
    torch.manual_seed(0)
    fp = create_model(model_name, num_classes=data.num_classes)
    if args.checkpoint:
        fp.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
    student = create_model(model_name, num_classes=data.num_classes)
    student.load_state_dict(fp.state_dict())
    calib = [eval_tf(data.images[i : i + 256].to(device)).cpu()
             for i in range(0, min(1024, len(data)), 256)]
    quantize_model(student, 4, 4, calibration=calib)
    student.to(device).eval()
    fp.to(device).eval()
    with tempfile.TemporaryDirectory() as cache:
        ref, _ = cached_reference(fp, data, eval_tf, cache_dir=cache, checkpoint_sha256="bench",
                                  batch_size=batch, device=device)
        ref, hit = cached_reference(fp, data, eval_tf, cache_dir=cache,
                                    checkpoint_sha256="bench", batch_size=batch, device=device)
        assert hit

    def sync():
        if gpu:
            torch.cuda.synchronize()

    def bare() -> float:
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16,
                                                    enabled=args.bf16):
            for _, images, _ in iter_batches(data, batch):
                student(eval_tf(images.to(device, non_blocking=True)))
        sync()
        return time.perf_counter() - t0

    def score() -> float:
        sync()
        t0 = time.perf_counter()
        score_table(student, data, ref, transform=eval_tf, batch_size=batch, device=device,
                      bf16=args.bf16)
        sync()
        return time.perf_counter() - t0

    bare()  # warm-up (allocator, kernels, quantized-weight cache)
    t_bare, t_score = [], []
    for _ in range(args.repeats):
        t_bare.append(bare())
        t_score.append(score())
    n = len(data)
    run = {
        "device": torch.cuda.get_device_name(device) if gpu else f"cpu ({os.cpu_count()} cores)",
        "model": f"{model_name} W4A4",
        "bf16": args.bf16,
        "batch_size": batch,
        "images": n,
        "bare_img_s": round(n / min(t_bare), 1),
        "score_img_s": round(n / min(t_score), 1),
        "ratio": round(min(t_bare) / min(t_score), 3),
        "bare_s": [round(t, 3) for t in t_bare],
        "score_s": [round(t, 3) for t in t_score],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(run))
    path = append_record("scoring_throughput.json", run)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
