"""Equal cost: does a selection method beat a per-epoch random subset at the same wall time?

CIFAR-10 ResNet-20 QAT from the repository's full-precision teacher, every run with the
same recipe (recipes/cifar10_resnet20_w{B}a{B}_full.yaml: 12 epochs, KD, SGD lr 0.01) and
only the selection changed: method, its options, fraction, R, free_scores and seed. Wall
time counts everything the trainer does (data loading, scoring, selection, training,
evaluation), so a method's scoring passes are paid for in the same column as the control's
extra epochs would be.

Resumable: finished runs (in the results file) are skipped, and a killed run continues
from its last checkpoint, so this can run in the background across several sittings:

    nohup python benchmarks/equal_cost.py > equal_cost.log 2>&1 &
    python benchmarks/equal_cost.py --render      # table and plot into docs/benchmarks/equal-cost.md

Writes benchmarks/results/equal_cost.json (a list of runs) after every run, and
benchmarks/results/equal_cost.png (top-1 against wall time, one marker per run).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from qat_cifar10 import code_version, machine
from readme_table import write_between
from results_file import append_record
from resumable import Results

from coreset_curate.common.atomic import atomic_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "equal_cost.json"
PLOT = ROOT / "benchmarks" / "results" / "equal_cost.png"
RUNS_DIR = ROOT / "benchmarks" / "runs" / "equal_cost"
README = ROOT / "docs" / "benchmarks" / "equal-cost.md"
TRAIN_SIZE = 50_000  # CIFAR-10's training split
TABLE_START, TABLE_END = "<!-- equal-cost:start -->", "<!-- equal-cost:end -->"

RHO = {"temperature": 1.0, "uniform": 0.2, "unseen": "mean"}
NOISY = {"label_noise": {"type": "symmetric", "rate": 0.2, "seed": 0}, "label_weight": 0.5}
# (bits, method, fraction, seed, R, free_scores, options[, recipe keys]), most informative
# first: at W2A2 10% the recipe's control, the project's method on free scores, its
# ablations, then seeds, W4A4, label noise, 30% and full data
PLAN = [
    (2, "random_epoch", 0.1, 0, 4, False, {}),
    (2, "rho", 0.1, 0, 1, True, RHO),
    (2, "random_epoch", 0.1, 0, 1, False, {}),
    (2, "rho", 0.1, 0, 1, True, {**RHO, "unseen": "first"}),
    (2, "rho", 0.1, 0, 1, True, {**RHO, "temperature": 0.0}),
    # coverage alone, no score: uniform 1.0 ignores the scores, unseen first draws every
    # sample once before any twice (what unseen=first does for the first ten epochs)
    (2, "rho", 0.1, 0, 1, True, {**RHO, "uniform": 1.0, "unseen": "first"}),
    (2, "acs", 0.1, 0, 4, False, {}),
    # the coverage ablation won on seed 0: random_cover is that draw as a method of its own
    # (no scores), with three seeds against per-epoch random re-drawn as often
    (2, "random_cover", 0.1, 0, 1, False, {}),
    (2, "random_cover", 0.1, 1, 1, False, {}),
    # the same subsets as random_cover s0, with the training steps recorded (free_scores):
    # the recording must not change training (the rho runs all record)
    (2, "random_cover", 0.1, 0, 1, True, {}),
    (2, "random_epoch", 0.1, 1, 1, False, {}),
    # the recording changes nothing (random_cover s0 with and without it: the same
    # weights), so the gap between rho's draws and random_cover's is the draws' or the
    # score's: rho's seeds decide
    (2, "rho", 0.1, 1, 1, True, RHO), (2, "rho", 0.1, 2, 1, True, RHO),
    (2, "random_epoch", 0.1, 2, 1, False, {}), (2, "random_cover", 0.1, 2, 1, False, {}),
    (2, "rho", 0.1, 1, 1, True, {**RHO, "temperature": 0.0}),
    (2, "rho", 0.1, 2, 1, True, {**RHO, "temperature": 0.0}),
    (4, "random_cover", 0.1, 0, 1, False, {}), (4, "random_epoch", 0.1, 0, 1, False, {}),
    # what the goals ask, first: W4A4 10% with three seeds of the control and of
    # the best new method (rho, soft: the best W2A2 mean so far), then label noise
    (4, "rho", 0.1, 0, 1, True, RHO),
    (4, "random_epoch", 0.1, 1, 1, False, {}), (4, "rho", 0.1, 1, 1, True, RHO),
    (4, "random_epoch", 0.1, 2, 1, False, {}), (4, "rho", 0.1, 2, 1, True, RHO),
    # 20% symmetric label noise with a label term beside distillation: how much of each
    # method's subsets is mislabeled (noisy_share), with its top-1 beside
    (4, "random_epoch", 0.1, 0, 1, False, {}, NOISY),
    (4, "rho", 0.1, 0, 1, True, RHO, NOISY),
    (4, "acs", 0.1, 0, 4, False, {}, NOISY),
    # ACS with three seeds at both bit widths (the recipe's R)
    (4, "acs", 0.1, 0, 4, False, {}),
    (2, "acs", 0.1, 1, 4, False, {}), (2, "acs", 0.1, 2, 4, False, {}),
    (4, "acs", 0.1, 1, 4, False, {}), (4, "acs", 0.1, 2, 4, False, {}),
    (4, "random_cover", 0.1, 0, 1, False, {}, NOISY),
    (4, "random_cover", 0.1, 1, 1, False, {}), (4, "random_cover", 0.1, 2, 1, False, {}),
    # does the reducible-loss score add to coverage? rho with unseen first, more seeds
    (2, "rho", 0.1, 1, 1, True, {**RHO, "unseen": "first"}),
    (2, "rho", 0.1, 2, 1, True, {**RHO, "unseen": "first"}),
    (2, "acs", 0.1, 0, 2, False, {}), (4, "acs", 0.1, 0, 2, False, {}),
    # 30% at both bit widths (one seed each: about 14 minutes a run), then full data
    (2, "random_cover", 0.3, 0, 1, False, {}), (2, "random_epoch", 0.3, 0, 1, False, {}),
    (2, "rho", 0.3, 0, 1, True, RHO), (2, "acs", 0.3, 0, 4, False, {}),
    (4, "random_epoch", 0.3, 0, 1, False, {}), (4, "rho", 0.3, 0, 1, True, RHO),
    (4, "acs", 0.3, 0, 4, False, {}), (4, "random_cover", 0.3, 0, 1, False, {}),
    (2, "acs", 0.3, 0, 2, False, {}), (4, "acs", 0.3, 0, 2, False, {}),
    (2, "full", 1.0, 0, 4, False, {}), (4, "full", 1.0, 0, 4, False, {}),
    # the soft draw's unbiased loss weights 1 / (n p) (Katharopoulos and Fleuret 2018), the
    # one rho option no row had measured: against the seed-0 soft row without them
    (2, "rho", 0.1, 0, 1, True, {**RHO, "reweight": True}),
]


def run_name(bits, method, fraction, seed, r, free, options, extra=None) -> str:
    tail = "full" if method == "full" else f"{method}_{round(fraction * 100)}"
    opts = "".join(f"_{k}-{v}" for k, v in sorted(options.items()))
    noise = "_noisy20" if extra and "label_noise" in extra else ""
    return f"w{bits}a{bits}_{tail}_R{r}{'_free' if free else ''}{opts}{noise}_s{seed}"


def noisy_share(run_dir: Path) -> float | None:
    """Share of the index's rows (all epochs) whose given label is not the true one."""
    import numpy as np

    from coreset_curate.common.checks import align
    from coreset_curate.common.index import read_index
    from coreset_curate.labels.noise import read_labels

    if not (run_dir / "labels.parquet").exists() or not (run_dir / "index.parquet").exists():
        return None
    ids, given, true, _ = read_labels(run_dir / "labels.parquet")  # sorted by sample_id
    rows = read_index(run_dir / "index.parquet").column("sample_id").to_numpy()
    pos, present = align(ids, rows)
    if not present.all():
        raise ValueError(f"{run_dir}: the index names ids the labels table lacks")
    return float(np.mean((given != true)[pos]))


def score_coverage(run_dir: Path) -> list[dict] | None:
    """For a run whose rounds come from training steps (free_scores): per selection
    epoch, the share of all samples that had a score and of the selected ones that had
    one (the rest were drawn without any information about them)."""
    import numpy as np
    import pyarrow.parquet as pq

    from coreset_curate.common.index import epoch_rows, read_index

    rounds = sorted((run_dir / "scores").glob("epoch_*.parquet"))
    if not rounds or not (run_dir / "index.parquet").exists():
        return None
    index = read_index(run_dir / "index.parquet")
    out = []
    for path in rounds:
        t = pq.read_table(path, columns=["sample_id", "loss"])
        seen = ~np.isnan(t.column("loss").to_numpy(zero_copy_only=False).astype(np.float64))
        epoch = int(path.stem.split("_")[1])
        chosen, _ = epoch_rows(index, epoch)
        pos = np.searchsorted(t.column("sample_id").to_numpy(), chosen)
        out.append({"epoch": epoch, "scored": float(seen.mean()),
                    "selected_scored": float(seen[pos].mean())})
    return out


def write_coverage() -> None:
    """``--coverage``: score_coverage of every finished free-scores run, into
    equal_cost_coverage.json, and a one-line summary of each printed."""
    from coreset_curate.common.atomic import write_text

    rows = []
    for r in load_results():
        if not r.get("free_scores"):
            continue
        cov = score_coverage(RUNS_DIR / r["name"])
        if cov is None:
            continue
        rows.append({"name": r["name"], "per_epoch": cov})
        mean = sum(c["selected_scored"] for c in cov) / len(cov)
        print(f"{r['name']}: selected samples that had a score, mean over the "
              f"{len(cov)} selections {mean:.3f} (last {cov[-1]['selected_scored']:.3f})")
    write_text(RESULTS.with_name("equal_cost_coverage.json"), json.dumps(rows, indent=2))


def recipe_config(bits, method, fraction, seed, r, free, options, extra=None):
    """The run's TrainConfig: the W{bits}A{bits} full-data recipe with only the selection
    (and the recipe keys of ``extra``) changed. time_to_accuracy.py builds its runs here."""
    from coreset_curate.training import load_recipe

    sets = [f"method={method}", f"fraction={fraction}", f"seed={seed}",
            f"reselect_every={r}", f"free_scores={str(free).lower()}",
            f"method_options={json.dumps(options)}",
            *(f"{k}={json.dumps(v)}" for k, v in (extra or {}).items())]
    return load_recipe(ROOT / "recipes" / f"cifar10_resnet20_w{bits}a{bits}_full.yaml", sets)


# what a row keeps of the trainer's summary
SUMMARY_FIELDS = ("model", "w_bits", "a_bits", "method", "fraction", "epochs", "R", "seed",
                  "top1", "best_top1", "wall_s", "scoring_s", "selection_s", "train_s",
                  "eval_s")


def run_record(summary: dict, options: dict, free: bool, resumed: bool,
               labels: dict | None = None) -> dict:
    """A finished run's fields of a results row (without name, machine, date, commit);
    ``labels``: the label-noise fields, placed after ``free_scores``."""
    return {**{k: summary[k] for k in SUMMARY_FIELDS},
            "options": options, "free_scores": free, **(labels or {}),
            "resumed": resumed, "cores_oversubscribed": summary["cores_oversubscribed"]}


def load_results() -> list[dict]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else []


def _label(r: dict) -> str:
    opts = ", ".join(f"{k}={v}" for k, v in sorted(r["options"].items()))
    return (f"{r['method']}{' (free)' if r.get('free_scores') else ''}"
            f"{f' [{opts}]' if opts else ''}")


def _noise(r: dict) -> str:
    ln = r.get("label_noise")
    return "-" if not ln else f"{ln.get('type', 'symmetric')} {ln['rate']:.0%}"


def _share(r: dict) -> str:
    return "-" if r.get("noisy_share") is None else f"{100 * r['noisy_share']:.1f}%"


def _train_rate(r: dict) -> str:
    """Training images per second of the row's training steps (CIFAR-10: 50,000 images)."""
    n = TRAIN_SIZE * (1.0 if r["method"] == "full" else r["fraction"]) * r["epochs"]
    return f"{n / r['train_s']:.0f}" if r.get("train_s") else "-"


def render(results: list[dict]) -> str:
    # train img/s tells the machine's speed apart from the method's cost: rows made hours
    # apart trained at 240-365 img/s with the cores quiet each time
    rows = ["| W/A | method | options | fraction | R | seed | noise | top-1 final | top-1 best "
            "| wall (s) | scoring (s) | train (s) | eval (s) | train img/s | noisy share "
            "| date | commit |",
            "|" + " --- |" * 17]
    for r in sorted(results, key=lambda r: (-r["w_bits"], r["fraction"], r["method"],
                                            json.dumps(r["options"], sort_keys=True),
                                            r["R"], r["seed"])):
        opts = ", ".join(f"{k}={v}" for k, v in sorted(r["options"].items())) or "-"
        rows.append(f"| W{r['w_bits']}A{r['a_bits']} | {r['method']}"
                    f"{' (free)' if r.get('free_scores') else ''} | {opts} | "
                    f"{r['fraction']:g} | {r['R']} | {r['seed']} | {_noise(r)} | "
                    f"{r['top1']:.2f} | {r['best_top1']:.2f} | {r['wall_s']:.0f} | "
                    f"{r['scoring_s']:.1f} | {r['train_s']:.0f} | {r['eval_s']:.0f} | "
                    f"{_train_rate(r)} | {_share(r)} | {r.get('date') or '-'} | "
                    f"{r.get('commit') or '-'} |")
    return "\n".join(rows) + "\n\n![top-1 against wall time](results/equal_cost.png)"


# the chart: one colour per method, one marker per fraction; filled for the method as
# the plan compares it (ACS at the recipe's R = 4, rho's default options on free scores,
# the random controls re-drawn every epoch), hollow for its variants (another R, other
# options); runs with label noise are in the table only (other data)
COLOURS = {"random_epoch": "tab:olive", "random_cover": "tab:brown", "rho": "tab:blue",
           "acs": "tab:orange", "full": "tab:purple"}
MARKERS = {0.1: "o", 0.3: "s", 1.0: "*"}


def _is_default(r: dict) -> bool:
    if r["method"] == "acs":
        return r["R"] == 4
    if r["method"] == "rho":
        return r["options"] == RHO and bool(r.get("free_scores"))
    return r["R"] == 1 and not r.get("free_scores") or r["method"] == "full"


def plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, bits in zip(axes, (2, 4)):
        runs = [r for r in results if r["w_bits"] == bits and not r.get("label_noise")]
        for r in runs:
            colour = COLOURS.get(r["method"], "tab:gray")
            filled = _is_default(r)
            ax.scatter(r["wall_s"], r["top1"], marker=MARKERS.get(r["fraction"], "D"),
                       s=90 if r["fraction"] == 1.0 else 40, linewidths=1.3,
                       facecolors=colour if filled else "none", edgecolors=colour)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([200, 300, 400, 600, 800, 1200, 1600]))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(f"CIFAR-10 ResNet-20 W{bits}A{bits}, 12 epochs")
        ax.set_xlabel("wall time, scoring included (s, 2-core CPU, log scale)")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3, which="both")
        if not runs:
            ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=ax.transAxes)
    handles = [Line2D([], [], ls="", marker="o", color=c, label=m) for m, c in COLOURS.items()]
    handles += [Line2D([], [], ls="", marker=mk, color="k", mfc="none",
                       label="full data" if f == 1.0 else f"{f:.0%} subset")
                for f, mk in MARKERS.items()]
    handles.append(Line2D([], [], ls="", marker="o", color="k", mfc="none",
                          label="hollow: a variant (ACS R = 2, other rho options)"))
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(PLOT) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_readme(results: list[dict]) -> None:
    plot(results)
    write_between(README, TABLE_START, TABLE_END, render(results) if results else "(no runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="run names to run")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no new run after this many minutes")
    parser.add_argument("--redo", nargs="+", default=[], metavar="NAME",
                        help="run these again from scratch: their records move to "
                             "equal_cost_superseded.json with --reason")
    parser.add_argument("--reason", default=None, help="why the --redo runs are redone")
    parser.add_argument("--render", action="store_true", help="only write table and plot")
    parser.add_argument("--coverage", action="store_true",
                        help="only measure how many selected samples had a free score")
    args = parser.parse_args()
    if args.coverage:
        write_coverage()
        return
    if args.redo:
        # records into equal_cost_superseded.json, run folders deleted: the pass redoes them
        Results(RESULTS).supersede(args.redo, args.reason, RUNS_DIR)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.render:
        write_readme(load_results())
        print(render(load_results()))
        return

    from coreset_curate.training import run_training

    start, info, commit = time.perf_counter(), machine(), code_version()
    for bits, method, fraction, seed, r, free, options, *more in PLAN:
        extra = more[0] if more else {}
        name = run_name(bits, method, fraction, seed, r, free, options, extra)
        if name in {x["name"] for x in load_results()} or (args.only and name not in args.only):
            continue
        if args.max_minutes and (time.perf_counter() - start) / 60 > args.max_minutes:
            print(f"time budget reached before {name}; run again to continue")
            break
        config = recipe_config(bits, method, fraction, seed, r, free, options, extra)
        out = RUNS_DIR / name
        resume = (out / "last.pt").exists()
        print(f"{name}: {'resuming' if resume else 'starting'} in {out}", flush=True)
        summary = run_training(config, out, resume=resume, overwrite=not resume)
        labels = {"label_noise": extra.get("label_noise"),
                  "label_weight": extra.get("label_weight", 0.0),
                  "noisy_share": noisy_share(out)}
        record = {"name": name, **run_record(summary, options, free, resume, labels),
                  "machine": info, "date": time.strftime("%Y-%m-%d"), "commit": commit}
        append_record(RESULTS.name, record)
        print(json.dumps(record), flush=True)
    write_readme(load_results())


if __name__ == "__main__":
    main()
