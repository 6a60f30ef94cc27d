"""What detection adds to ``coreset-curate``: the ``make-detection`` command and
``demo --task detection`` (``coreset_curate.cli.tasks`` reads this module).

Nothing here imports torch until a command runs, so ``coreset-curate --help`` stays fast.
"""

from __future__ import annotations

import argparse

DEMO_HELP = "RetinaNet on canvases of pasted digits, scored by COCO AP"
DEMO_FP_EPOCHS = 24


def add_commands(sub, options) -> None:
    """Add ``make-detection`` to the subparsers ``sub``.

    Args:
        sub: the CLI's subparsers.
        options: the CLI's shared option helpers (``coreset_curate.cli.parser.OPTIONS``).
    """
    md = sub.add_parser(
        "make-detection", help="write a COCO-layout detection set made from a classification "
                               "split (objects pasted onto canvases)",
        description="Paste images of a classification split (1-4 a canvas, 24-56 px) onto "
                    "96-128 px canvases with exact boxes and write ROOT/SPLIT/*.png and "
                    "ROOT/annotations/instances_SPLIT.json, deterministically by seed; "
                    "load_data('coco:ROOT', SPLIT) reads it back.")
    md.add_argument("--data", required=True, help="classification dataset (Parquet folder, "
                    "digits, ...)")
    options.split(md, "split to take the objects from")
    md.add_argument("--count", type=options.positive_int, required=True,
                    help="canvases to write")
    options.seed(md)
    md.add_argument("--class-noise", type=float, default=0.0,
                    help="share of boxes given another class (truth kept in "
                         "true_category_id), for experiments (0)")
    md.add_argument("--out-split", default=None, help="split name written (default --split)")
    md.add_argument("--out", required=True, help="dataset root folder")
    options.overwrite(md)
    md.set_defaults(func=make_detection)


def make_detection(args: argparse.Namespace) -> int:
    """``coreset-curate make-detection``: ``make_coco`` of the parsed arguments, read back."""
    from ...data import load_data
    from .data import read_coco
    from .synth import make_coco

    data = load_data(args.data, args.split)
    split = args.out_split or args.split
    path = make_coco(data, args.out, split, count=args.count, seed=args.seed,
                     class_noise=args.class_noise, overwrite=args.overwrite)
    det = read_coco(args.out, split)  # read back: the layout is what the reader expects
    boxes = sum(len(b) for b in det.boxes)
    print(f"wrote {path}: {len(det)} images, {boxes} boxes of {det.num_classes} classes")
    return 0


def run_demo(out: str, chosen: dict, overwrite: bool) -> str:
    """``coreset-curate demo --task detection``: the detection demo into ``out`` with the
    options ``chosen`` on the command line; returns the summary it prints."""
    from .demo import (DetectionDemoConfig, format_detection_summary,
                                    run_detection_demo)

    summary = run_detection_demo(out, DetectionDemoConfig(**chosen), overwrite=overwrite)
    return format_detection_summary(summary)
