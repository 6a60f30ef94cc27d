"""Decoding throughput of streamed datasets (the ImageNet path): images per second that
``StreamingImageData`` delivers as uint8 batches, train view (random resized crops) and
eval view (resize + centre crop), with and without JPEG draft decoding, for each number of
worker processes asked for.

Images: ImageNet-like JPEGs (quality 90, 500x375 and other typical sizes) cut from the two
photographs that ship with scikit-learn (``load_sample_images``), so nothing is
downloaded; ``--data`` measures a real Parquet folder or ``imagefolder:PATH`` instead.
Each setting decodes ``--images`` images in batches of ``--batch-size`` after one warm-up
batch. Appends to ``benchmarks/results/stream_decode.json`` (or ``$OUT/``).

    python benchmarks/stream_decode.py [--workers 0 1] [--images 1024] [--crop 224]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from results_file import append_record

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(500, 375), (500, 333), (375, 500), (500, 400), (640, 480), (333, 500)]


def sample_photos(n: int, folder: Path, factor: float = 1.0) -> str:
    """``n`` JPEGs cut (and flipped, resized) from scikit-learn's sample photographs,
    written as a Hugging Face Parquet split ``train`` in ``folder``."""
    import datasets
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]  # 427 x 640 each
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(n):
        src = photos[i % len(photos)]
        w, h = (round(side * factor) for side in SIZES[i % len(SIZES)])
        scale = rng.uniform(1.0, 1.6)
        left = int(rng.integers(0, max(1, src.width - src.width / scale)))
        top = int(rng.integers(0, max(1, src.height - src.height / scale)))
        img = src.resize((w, h), Image.BILINEAR,
                         box=(left, top, left + src.width / scale, top + src.height / scale))
        if i % 2:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        images.append({"bytes": buf.getvalue(), "path": None})
        labels.append(i % 10)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(num_classes=10)})
    ds = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    ds.to_parquet(str(folder / "train-00000-of-00001.parquet"))
    mean_kb = np.mean([len(x["bytes"]) for x in images]) / 1024
    return (f"{n} JPEGs from sklearn sample photos at {factor:g}x ImageNet sizes (500x375 "
            f"...), {mean_kb:.0f} kB mean")


def main() -> None:
    from coreset_curate.data import load_batches, load_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="Parquet folder or imagefolder:PATH "
                        "(default: sample photos made here)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--size-factor", type=float, default=1.0,
                        help="scale the made images' sides (2.5: phone-photo sizes, where "
                             "draft decoding pays)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            source = sample_photos(args.images + args.batch_size, Path(tmp),
                                   args.size_factor)
            data_arg = tmp
        else:
            source, data_arg = args.data, args.data
        data = load_data(data_arg, args.split, stream=True, crop_size=args.crop)
        n = min(args.images, len(data) - args.batch_size)
        batches = [np.arange(i, min(i + args.batch_size, args.batch_size + n))
                   for i in range(args.batch_size, args.batch_size + n, args.batch_size)]
        rows = []
        for draft in (True, False):
            for view in ("train", "eval"):
                for workers in args.workers:
                    data.draft, data.num_workers = draft, workers
                    warm = [np.arange(args.batch_size)]
                    list(load_batches(data, warm, view=view,
                                      generator=torch.Generator().manual_seed(0)))
                    start = time.perf_counter()
                    count = sum(len(x) for _, x, _ in load_batches(
                        data, batches, view=view, generator=torch.Generator().manual_seed(0)))
                    seconds = time.perf_counter() - start
                    row = {"view": view, "draft": draft, "workers": workers, "images": count,
                           "seconds": round(seconds, 3),
                           "images_per_s": round(count / seconds, 1)}
                    rows.append(row)
                    print(f"{view:5s} draft={str(draft):5s} workers={workers}: "
                          f"{row['images_per_s']:8.1f} img/s ({count} in {seconds:.1f} s)",
                          flush=True)
    record = {
        "benchmark": "stream_decode", "source": source, "crop": args.crop,
        "batch_size": args.batch_size, "rows": rows,
        "device": f"cpu ({os.cpu_count()} cores)", "python": platform.python_version(),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    from PIL import __version__ as pil_version

    record["pillow"] = pil_version
    path = append_record("stream_decode.json", record)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
