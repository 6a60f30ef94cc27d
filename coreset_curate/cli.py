"""Command line: ``coreset-curate [--version] [-v|-q] COMMAND ...``.

User errors (bad arguments, bad files) end with one line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__

log = logging.getLogger("coreset_curate")

USER_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError,
               IsADirectoryError, NotADirectoryError, PermissionError)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _bits(text: str) -> int:
    if text not in {"2", "3", "4", "5", "6", "7", "8", "32"}:
        raise argparse.ArgumentTypeError(f"bits must be 2..8, or 32 for float; got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coreset-curate",
        description="Quantization-aware adaptive coreset selection: score samples with a "
                    "quantized model, select per-epoch subsets for QAT, audit label noise.")
    parser.add_argument("--version", action="version", version=f"coreset-curate {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="run the whole pipeline on scikit-learn's digits (no download)",
        description="Train a small float CNN on scikit-learn's digits, quantize it with LSQ, "
                    "score every sample, select ACS subsets for a few QAT epochs, and write "
                    "scores.parquet, index.parquet, checkpoints and summary.json to --out.")
    demo.add_argument("--out", required=True, help="output folder")
    demo.add_argument("--epochs", type=_positive_int, default=12, help="QAT epochs (12)")
    demo.add_argument("--reselect-every", type=_positive_int, default=3,
                      help="re-score and re-select every R epochs (3)")
    demo.add_argument("--fraction", type=_fraction, default=0.1, help="subset fraction (0.1)")
    demo.add_argument("--method", default="acs", help="selection method (acs)")
    demo.add_argument("--schedule", default="cos", help="ACS schedule (cos)")
    demo.add_argument("--w-bits", type=_bits, default=4, help="weight bits (4)")
    demo.add_argument("--a-bits", type=_bits, default=4, help="activation bits (4)")
    demo.add_argument("--fp-epochs", type=_positive_int, default=30,
                      help="epochs of full-precision training (30)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--overwrite", action="store_true", help="replace earlier outputs")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, format_summary, run_demo
    from .selection import METHODS, SCHEDULES

    if args.method not in METHODS:
        raise ValueError(f"unknown method {args.method!r}; registered methods: {sorted(METHODS)}")
    if args.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {args.schedule!r}; registered: {sorted(SCHEDULES)}")
    config = DemoConfig(fp_epochs=args.fp_epochs, epochs=args.epochs,
                        reselect_every=args.reselect_every, fraction=args.fraction,
                        method=args.method, schedule=args.schedule, w_bits=args.w_bits,
                        a_bits=args.a_bits, seed=args.seed)
    summary = run_demo(args.out, config, overwrite=args.overwrite)
    print(format_summary(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"coreset-curate {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
