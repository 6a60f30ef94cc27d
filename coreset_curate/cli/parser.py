"""The command line's parser: one function a command, each adding its arguments."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

from .. import __version__
from .commands import (_cmd_audit, _cmd_clean, _cmd_curate, _cmd_demo, _cmd_export,
                       _cmd_noise, _cmd_score, _cmd_select, _cmd_train)
from .tasks import demo_tasks, task_clis


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


LABELS_HELP = ("labels table (sample_id, label[, true_label]: from `noise` or `clean`) "
               "whose labels replace the dataset's")


# ------------------------------------------------------------------ options several commands take
def _split(p, help: str | None = None) -> None:
    p.add_argument("--split", default="train", **({"help": help} if help else {}))


def _id_column(p) -> None:
    p.add_argument("--id-column", default=None, help="column holding sample ids")


def _seed(p) -> None:
    p.add_argument("--seed", type=int, default=0)


def _overwrite(p, help: str | None = None) -> None:
    p.add_argument("--overwrite", action="store_true", **({"help": help} if help else {}))


def _labels(p, help: str) -> None:
    p.add_argument("--labels", default=None, metavar="LABELS.parquet", help=help)


def _set(p, help: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


# what a task's ``cli.add_commands`` builds its commands from (``coreset_curate.cli.tasks``)
OPTIONS = SimpleNamespace(positive_int=_positive_int, fraction=_fraction, bits=_bits,
                          split=_split, id_column=_id_column, seed=_seed,
                          overwrite=_overwrite, labels=_labels, set=_set)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (``PROG: error: ...``), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_demo(sub) -> None:
    demos = demo_tasks()
    demo = sub.add_parser(
        "demo", help="run the whole pipeline on scikit-learn's digits (no download)",
        description="Train a small float CNN on scikit-learn's digits, quantize it with LSQ, "
                    "score every sample, select ACS subsets for a few QAT epochs, and write "
                    "scores.parquet, index.parquet, checkpoints and summary.json to --out. "
                    "--task picks another task's demo of the same pipeline.")
    demo.add_argument("--out", required=True, help="output folder")
    demo.add_argument("--task", choices=tuple(demos), default="classification",
                      help="; ".join(f"{name}: {m.DEMO_HELP}" for name, m in demos.items()))
    demo.add_argument("--epochs", type=_positive_int, default=12, help="QAT epochs (12)")
    demo.add_argument("--reselect-every", type=_positive_int, default=3,
                      help="re-score and re-select every R epochs (3)")
    demo.add_argument("--fraction", type=_fraction, default=0.1, help="subset fraction (0.1)")
    demo.add_argument("--method", default="acs", help="selection method (acs)")
    demo.add_argument("--schedule", default="cos", help="ACS schedule (cos)")
    demo.add_argument("--w-bits", type=_bits, default=4, help="weight bits (4)")
    demo.add_argument("--a-bits", type=_bits, default=4, help="activation bits (4)")
    fp = "; ".join(f"{name} {m.DEMO_FP_EPOCHS}" for name, m in demos.items())
    demo.add_argument("--fp-epochs", type=_positive_int, default=None,
                      help=f"epochs of full-precision training ({fp})")
    _seed(demo)
    _overwrite(demo, "replace earlier outputs")
    demo.set_defaults(func=_cmd_demo)


def _memory(text: str) -> int:
    from ..selection.streamed import parse_memory

    try:
        return parse_memory(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_select(sub) -> None:
    sel = sub.add_parser(
        "select", help="select the subset of an epoch from score tables into an index",
        description="Select the subset of epoch T from one or more score tables (scoring "
                    "rounds) and write it to an index, or add it to an existing one.")
    sel.add_argument("--scores", nargs="+", required=True, metavar="S.parquet",
                     help="score tables (one per scoring round, or several rounds in one)")
    sel.add_argument("--method", default="acs", help="selection method (acs)")
    sel.add_argument("--fraction", type=_fraction, required=True, help="subset fraction")
    sel.add_argument("--epoch", type=int, default=0, help="epoch T that uses the subset (0)")
    sel.add_argument("--epochs", type=_positive_int, default=None,
                     help="the run's total epochs E (acs and infobatch need it)")
    sel.add_argument("--schedule", default="cos", help="ACS schedule (cos)")
    _seed(sel)
    scope = sel.add_mutually_exclusive_group()
    scope.add_argument("--per-class", dest="per_class", action="store_true", default=True,
                       help="keep the fraction of every class (default)")
    scope.add_argument("--global", dest="per_class", action="store_false",
                       help="plain top-k over all samples")
    sel.add_argument("--min-per-class", type=int, default=0,
                     help="keep at least this many of every class (0)")
    sel.add_argument("--reselect-every", type=_positive_int, default=1, metavar="R",
                     help="write the subset for epochs T..T+R-1 (1)")
    sel.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="method option, e.g. hard_cut=0.2 for ccs (repeatable)")
    sel.add_argument("--exclude", default=None, metavar="AUDIT",
                     help="never select these samples: an audit folder (its flagged "
                          "mislabeled samples) or a table with a sample_id column; class "
                          "budgets stay those of all samples")
    _labels(sel, "the labels table the data is trained with: samples it leaves out "
                 "are not selected (its labels must be the scores')")
    sel.add_argument("--memory-budget", type=_memory, default=None, metavar="SIZE",
                     help="memory the selection may hold, e.g. 1500M or 2G (default: a "
                          "quarter of the machine's); one larger table is read by row "
                          "groups, with the same ids")
    sel.add_argument("--out", required=True, help="index file (created, or extended)")
    _overwrite(sel, "replace epochs the index already has")
    sel.set_defaults(func=_cmd_select)


def _add_export(sub) -> None:
    exp = sub.add_parser(
        "export", help="write an epoch's subset, images included, as Parquet",
        description="Write the rows of one epoch of an index as Parquet with the dataset's "
                    "features; datasets.load_dataset('parquet', data_dir=OUT) reads it.")
    exp.add_argument("--data", required=True,
                     help="dataset: Parquet folder/file/glob, digits or coco:ROOT")
    _split(exp)
    exp.add_argument("--index", required=True)
    exp.add_argument("--epoch", type=int, required=True)
    _id_column(exp)
    _labels(exp, LABELS_HELP + " (the table the run was trained with)")
    exp.add_argument("--out", required=True, help="output folder")
    _overwrite(exp)
    exp.set_defaults(func=_cmd_export)


def _add_audit(sub) -> None:
    au = sub.add_parser(
        "audit", help="flag likely mislabeled samples and write an HTML/Markdown report",
        description="Audit the labels behind score tables: per-sample suspicion, flags with "
                    "per-class thresholds, kind (mislabeled vs quantization-fragile, from the "
                    "reference columns), per-class noise rates. Writes audit.parquet, "
                    "report.html (self-contained) and summary.md to --out.")
    au.add_argument("--scores", nargs="+", required=True, metavar="S.parquet",
                    help="score tables (one per scoring round, or several rounds in one)")
    au.add_argument("--data", default=None,
                    help="the dataset the scores came from (class names, thumbnails)")
    _split(au)
    au.add_argument("--stream", action="store_true",
                    help="read --data's images only for the thumbnails shown (ImageNet)")
    _id_column(au)
    _labels(au, LABELS_HELP + " (the table the scores were made with)")
    au.add_argument("--index", default=None, help="a run's index: flagged share per epoch")
    au.add_argument("--true-labels", default=None, metavar="LABELS.parquet",
                    help="labels table with true_label (from `noise` or a run trained with "
                         "label_noise): adds precision, recall, F1 and AUROC")
    au.add_argument("--suspicion", default="auto",
                    choices=["auto", "channel", "prob", "aum", "evs"],
                    help="what ranks samples (channel: posterior that the label is wrong "
                         "under the estimated noise, needs a round with probs; prob: 1 - mean "
                         "prob of the given label; auto: channel when it can)")
    au.add_argument("--count", default="confident_joint", choices=["confident_joint", "gap"],
                    help="how many to flag per class (confident_joint; gap: at least the "
                         "split in the class's suspicion where the joint finds noise)")
    au.add_argument("--max-examples", type=int, default=48,
                    help="thumbnails shown per group (48)")
    au.add_argument("--out", required=True, help="report folder")
    _overwrite(au, "replace an earlier report")
    au.set_defaults(func=_cmd_audit)


def _add_noise(sub) -> None:
    no = sub.add_parser(
        "noise", help="write a labels table with injected noise (for experiments)",
        description="Flip labels of a dataset split (symmetric, or class-dependent with "
                    "--type asymmetric) deterministically by seed, and write sample_id, label "
                    "(noisy) and true_label as Parquet.")
    no.add_argument("--data", required=True, help="dataset: Parquet folder/file/glob or digits")
    _split(no)
    _id_column(no)
    no.add_argument("--type", default="symmetric", choices=["symmetric", "asymmetric"])
    no.add_argument("--rate", type=float, required=True, help="share of labels to flip")
    _seed(no)
    no.add_argument("--out", required=True, help="labels table (.parquet)")
    _overwrite(no)
    no.set_defaults(func=_cmd_noise)


def _add_clean(sub) -> None:
    cl = sub.add_parser(
        "clean", help="act on an audit: a labels table without (or relabeling) flagged samples",
        description="Write a labels table from an audit: the samples it flags as mislabeled "
                    "(and those an audit without a reference cannot tell, 'unknown') are left "
                    "out, or given the audit's suggested label with --relabel; fragile samples "
                    "(quantization damage, right labels) are kept. Train on it with the recipe "
                    "key labels: or --labels on score, select, audit and export.")
    cl.add_argument("--audit", required=True, help="audit folder (coreset-curate audit --out)")
    cl.add_argument("--relabel", action="store_true",
                    help="relabel flagged samples to suggested_label instead of leaving them "
                         "out (those without a suggestion are left out)")
    cl.add_argument("--kinds", default="mislabeled,unknown",
                    help="flag kinds to act on, comma-separated (mislabeled,unknown)")
    _labels(cl, "the labels table the audited scores were made with: its true_label "
                "column is carried over and what it left out stays out")
    cl.add_argument("--data", default=None,
                    help="the dataset, to check that the table fits it (Parquet folder, ...)")
    _split(cl)
    _id_column(cl)
    cl.add_argument("--out", required=True, help="labels table to write (.parquet)")
    _overwrite(cl)
    cl.set_defaults(func=_cmd_clean)


def _add_train(sub) -> None:
    tr = sub.add_parser(
        "train", help="full-precision training or QAT with per-epoch coreset selection",
        description="Train as a recipe describes: full-precision (the teacher) or QAT from a "
                    "full-precision checkpoint, re-scoring and re-selecting the data every R "
                    "epochs. Writes scores, the index, checkpoints, metrics.jsonl and "
                    "summary.json to --out.")
    tr.add_argument("--recipe", default=None, help="YAML recipe (see recipes/)")
    _set(tr, "override a recipe key (repeatable), e.g. --set fraction=0.3")
    tr.add_argument("--out", required=True, help="run folder")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out")
    _overwrite(tr, "start again in a non-empty --out")
    tr.add_argument("--stop-after", type=_positive_int, default=None, metavar="N",
                    help="train at most N epochs now, then stop (continue with --resume)")
    tr.set_defaults(func=_cmd_train)


def _add_curate(sub) -> None:
    cu = sub.add_parser(
        "curate", help="noisy labels to a quantized model: audit, clean, teacher again, QAT",
        description="Run the whole pipeline a curate recipe describes: the teacher on the "
                    "labels as given, the noise audit with it and the calibrated quantized "
                    "student, the cleaned labels, the teacher trained again on them, QAT of "
                    "the student with selection, and a final audit. Each stage is skipped "
                    "when its outputs exist and its inputs are unchanged; a killed run "
                    "started again resumes. Writes summary.json and report.html to --out.")
    cu.add_argument("--recipe", required=True, help="curate recipe (see recipes/*_curate.yaml)")
    _set(cu, "override a curate key (repeatable), e.g. "
             "--set 'student_set={fraction: 0.3}'")
    cu.add_argument("--out", required=True, help="pipeline folder")
    _overwrite(cu, "make again the stages whose inputs changed (and those after them)")
    cu.set_defaults(func=_cmd_curate)


def _add_score(sub) -> None:
    sc = sub.add_parser(
        "score", help="score every sample with a (quantized) student into a Parquet table",
        description="Score every sample of a dataset split with a student checkpoint (EVS, "
                    "loss, margin, entropy, grand_last, ...; DS and the reference columns "
                    "with --reference). Shards are written as they finish, so a killed run "
                    "started again with the same arguments resumes; under torchrun the "
                    "shards are split across ranks and rank 0 writes one table.")
    sc.add_argument("--data", required=True, help="Parquet folder/file/glob, digits, "
                    "torchvision:NAME, coco:ROOT, or another registered data source")
    _split(sc)
    _id_column(sc)
    _labels(sc, LABELS_HELP)
    sc.add_argument("--model", required=True, help="a registered model of the data's task "
                    "(resnet20, retinanet_resnet18_fpn for coco:ROOT data, ...)")
    sc.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                    help="the model's options, as in a recipe's model_kwargs (e.g. "
                         "fpn_channels=64)")
    sc.add_argument("--checkpoint", required=True, help="student state dict (weights-only)")
    sc.add_argument("--reference", default=None, help="full-precision state dict for DS")
    sc.add_argument("--w-bits", type=_bits, default=32, help="student weight bits (32)")
    sc.add_argument("--a-bits", type=_bits, default=32, help="student activation bits (32)")
    sc.add_argument("--first-last", default="int8", choices=["int8", "float", "same"])
    sc.add_argument("--epoch", type=int, default=0, help="training epoch of the student (0)")
    sc.add_argument("--batch-size", type=_positive_int, default=None,
                    help="default: 256 on CPU, 1024 on CUDA")
    sc.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    sc.add_argument("--shard-rows", type=_positive_int, default=8192)
    sc.add_argument("--cache-dir", default=None,
                    help="where reference outputs are cached (default: beside --out)")
    sc.add_argument("--embeddings", action="store_true", help="add penultimate features")
    sc.add_argument("--probs", action="store_true",
                    help="add the whole softmax (the audit's channel suspicion reads it)")
    sc.add_argument("--bf16", action="store_true", help="bfloat16 autocast forward (CUDA)")
    sc.add_argument("--channels-last", action="store_true", help="channels-last batches")
    sc.add_argument("--normalize-from", default="train", metavar="SPLIT",
                    help="split whose pixel statistics normalise the input (train)")
    sc.add_argument("--mean", type=float, nargs="+", default=None, metavar="M",
                    help="normalise with these per-channel means instead (with --std), e.g. "
                         "0.485 0.456 0.406 for torchvision's ImageNet models")
    sc.add_argument("--std", type=float, nargs="+", default=None, metavar="S",
                    help="per-channel standard deviations (with --mean)")
    sc.add_argument("--stream", action="store_true",
                    help="decode images batch by batch instead of into memory (ImageNet), "
                         "as centre crops of --crop-size")
    sc.add_argument("--crop-size", type=_positive_int, default=None,
                    help="with --stream: crop side (224)")
    sc.add_argument("--resize-size", type=_positive_int, default=None,
                    help="with --stream: shorter side before the centre crop (crop / 0.875)")
    sc.add_argument("--workers", type=int, default=None,
                    help="with --stream: decoding processes (cores - 1, at most 16)")
    sc.add_argument("--out", required=True, help="score table to write")
    _overwrite(sc)
    sc.set_defaults(func=_cmd_score)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="coreset-curate",
        description="Quantization-aware adaptive coreset selection: score samples with a "
                    "quantized model, select per-epoch subsets for QAT, audit label noise.")
    parser.add_argument("--version", action="version", version=f"coreset-curate {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in (_add_demo, _add_select, _add_export, _add_audit, _add_clean, _add_noise,
                _add_train, _add_curate, _add_score):
        add(sub)
    for module in task_clis().values():  # the tasks' own commands, after the toolkit's
        if hasattr(module, "add_commands"):
            module.add_commands(sub, OPTIONS)
    return parser
