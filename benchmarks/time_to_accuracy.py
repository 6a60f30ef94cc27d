"""Time to accuracy: which selection, at a budget of sample-steps, comes closest to the
full-data QAT run, and how much of that run can be saved?

A budget B counts sample-steps in full-data epochs (CIFAR-10: 50,000 sample-steps a
unit): full data for 6 epochs, 50% for 12 epochs and 10% for 60 epochs all spend B = 6.
Every run is CIFAR-10 ResNet-20 QAT from the repository's teacher with the distillation
recipe of equal_cost.py (recipes/cifar10_resnet20_w{B}a{B}_full.yaml, built by its
``recipe_config``); only the selection, the fraction and the epoch count change. The
cosine learning rate follows the run's real steps, so every run of one budget takes the
same number of optimizer steps.

Paired seeds: seed s gives every run the same initial weights (the teacher's), the same
calibration batches (spread over the split, no randomness) and the same augmentation and
shuffle generator (seeded by s); only what the method selects differs.

The plan (``--list``), in this order: B = 6 at W2A2 (random_epoch and random_cover at 10% x
60, rho, full x 6, random_epoch 50% x 12, InfoBatch's rule x 8, ACS R = 10), three seeds;
B = 12 at W2A2 (full x 12, random_epoch 50% x 24, InfoBatch's rule x 16), three seeds; W4A4
at B = 6 (full x 6, random_epoch 50% x 12, InfoBatch's rule x 8), seed 0 of each first.

The test split is evaluated at a quarter, half and three quarters of the run and at its
end (``eval_epochs``), and that time is counted apart: ``wall_s`` is everything the
trainer did, ``eval_s`` the evaluations in it, and the chart's x axis is ``wall_s -
eval_s`` (data, scoring, selection and training).

Resumable: finished runs (in the results file) are skipped, a killed run continues from
its last checkpoint:

    nohup python benchmarks/time_to_accuracy.py > time_to_accuracy.log 2>&1 &
    python benchmarks/time_to_accuracy.py --render   # table and chart

Writes benchmarks/results/time_to_accuracy.json (a row a finished run) and
benchmarks/results/time_to_accuracy.png.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from equal_cost import recipe_config, run_record
from qat_cifar10 import code_version, machine
from resumable import Results, parser, rendered, train

from coreset_curate.common.atomic import atomic_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "time_to_accuracy.json"
PLOT = ROOT / "benchmarks" / "results" / "time_to_accuracy.png"
RUNS_DIR = ROOT / "benchmarks" / "runs" / "time_to_accuracy"
README = ROOT / "docs" / "benchmarks" / "time-to-accuracy.md"
TABLE_START, TABLE_END = "<!-- time-to-accuracy:start -->", "<!-- time-to-accuracy:end -->"
TRAIN_SIZE = 50_000  # CIFAR-10's training split

RHO = {"temperature": 1.0, "uniform": 0.2, "unseen": "mean"}
# InfoBatch's own rule at B = 6 over 8 epochs: the first epoch (no loss seen yet) and the
# last (annealing from 0.875 E) on the full data, the 6 between drop prune_ratio of the
# samples below the mean loss. About 80% of a trained model's losses lie below the mean
# (the teacher's: 0.88 on the training split), so 0.4 keeps about 68% of those epochs:
# 2 + 6 x 0.68 = 6.1 units (measured: 6.14-6.15). At B = 12 the same rule over 16 epochs:
# 3 full epochs (the first, and the last two from 0.875 E) + 13 x 0.69 = 12.0 units.
# The row records what it spent (``spent``).
INFOBATCH = {"prune_ratio": 0.4, "anneal": 0.875}


# (budget, bits, method, fraction, epochs, R, free_scores, options, seed): B = 6 at W2A2
# first, the RS2 control and the cheap methods before the costly ones, seed 0 of each
# before seed 1; then B = 12 at W2A2 (full, and the two best of B = 6: infobatch and a
# random half re-drawn, which is the control), three seeds; then W4A4 at B = 6 (full, the
# control and the best of W2A2), seed 0 first
def _plan() -> list[tuple]:
    b6 = [("random_epoch", 0.1, 60, 1, False, {}),
          ("random_cover", 0.1, 60, 1, False, {}),   # RS2 without replacement
          ("rho", 0.1, 60, 1, True, RHO),
          ("full", 1.0, 6, 1, False, {}),
          ("random_epoch", 0.5, 12, 1, False, {}),
          ("infobatch", 1.0, 8, 1, True, INFOBATCH),
          ("acs", 0.1, 60, 10, False, {})]            # the paper's R = 10
    b12 = [("full", 1.0, 12, 1, False, {}),
           ("random_epoch", 0.5, 24, 1, False, {}),
           ("infobatch", 1.0, 16, 1, True, INFOBATCH)]
    w4 = [("full", 1.0, 6, 1, False, {}),
          ("random_epoch", 0.5, 12, 1, False, {}),
          ("infobatch", 1.0, 8, 1, True, INFOBATCH)]
    return ([(6, 2, *row, seed) for seed in (0, 1, 2) for row in b6]
            + [(12, 2, *row, seed) for seed in (0, 1, 2) for row in b12]
            + [(6, 4, *row, seed) for seed in (0, 1, 2) for row in w4])


PLAN = _plan()


def eval_epochs(epochs: int) -> list[int]:
    """Evaluate after a quarter, half and three quarters of the run (and its end)."""
    return sorted({max(1, round(q * epochs)) for q in (0.25, 0.5, 0.75)} | {epochs})


def run_name(budget, bits, method, fraction, epochs, r, free, options, seed) -> str:
    opts = "".join(f"_{k}-{v}" for k, v in sorted(options.items()))
    return (f"b{budget}_w{bits}a{bits}_{method}_{round(fraction * 100)}_e{epochs}_R{r}"
            f"{'_free' if free else ''}{opts}_s{seed}")


def progress(out: Path, epochs: int) -> dict:
    """From the run's metrics.jsonl: sample-steps spent (``spent``, in full-data epochs)
    and the test top-1 at each evaluated epoch with the cost so far (data, scoring,
    selection and training seconds, evaluation left out)."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
             if x.strip()]
    steps, cost, curve = 0, 0.0, []
    for line in sorted(lines, key=lambda x: x["epoch"]):
        steps += line["subset_size"]
        cost += line["scoring_s"] + line["selection_s"] + line["train_s"]
        if "top1" in line:
            curve.append({"epoch": line["epoch"] + 1, "top1": line["top1"],
                          "spent": round(steps / TRAIN_SIZE, 4), "cost_s": round(cost, 1)})
    if len(lines) != epochs:
        raise RuntimeError(f"{out}: metrics.jsonl has {len(lines)} epochs, not {epochs}")
    return {"spent": round(steps / TRAIN_SIZE, 4), "curve": curve}


def run(results: Results, row: tuple, info: dict, limit_train: int | None,
        runs_dir: Path) -> None:
    budget, bits, method, fraction, epochs, r, free, options, seed = row
    name = run_name(*row)
    extra = {"epochs": epochs, "eval_epochs": eval_epochs(epochs),
             **({"limit_train": limit_train, "limit_test": 1000} if limit_train else {})}
    config = recipe_config(bits, method, fraction, seed, r, free, options, extra)
    out = runs_dir / name
    resumed = (out / "last.pt").exists()
    summary = train(config, out)
    record = {"name": name, "budget": budget, **run_record(summary, options, free, resumed),
              **progress(out, epochs),
              "train_wall_s": round(summary["wall_s"] - summary["eval_s"], 2),
              **info, "commit": code_version()}
    results.save(record)
    print(json.dumps(record), flush=True)


# ------------------------------------------------------------------ reading the rows
def _key(r: dict) -> tuple:
    """A configuration: every row of it differs by seed only."""
    return (r["budget"], r["w_bits"], r["method"], r["fraction"], r["epochs"], r["R"],
            bool(r["free_scores"]), json.dumps(r["options"], sort_keys=True))


def _label(key: tuple) -> str:
    _, _, method, fraction, epochs, r, free, opts = key
    options = ", ".join(f"{k}={v}" for k, v in sorted(json.loads(opts).items()))
    share = "" if method in ("full", "infobatch") else f" {fraction:.0%}"
    return (f"{method}{share} x {epochs} ep{f', R={r}' if r > 1 else ''}"
            f"{' (free)' if free else ''}{f' [{options}]' if options else ''}")


def _cpu(r: dict) -> str:
    return r.get("machine", {}).get("capability", "?")


def _timed(r: dict, cpu: str | None) -> bool:
    return _cpu(r) == cpu and not r["cores_oversubscribed"] and not r["resumed"]


def timing_machine(rows: list[dict]) -> str | None:
    """The CPU kind (torch's capability: the lent machines differ) with the most rows whose
    wall time counts: neither run beside other jobs nor resumed across sittings."""
    counts: dict[str, int] = {}
    for r in rows:
        if _timed(r, _cpu(r)):
            counts[_cpu(r)] = counts.get(_cpu(r), 0) + 1
    return max(sorted(counts), key=counts.get) if counts else None


def summarise(rows: list[dict]) -> list[dict]:
    """Per configuration: seeds, top-1 mean and min-max, the paired difference to the
    budget's best random_epoch configuration (same seeds), spent sample-steps, and wall
    time and scoring share over the runs whose wall time compares (on ``timing_machine``,
    not beside other jobs, not resumed): every seed counts for accuracy, only those for time."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    cpu = timing_machine(rows)
    out = []
    for key, runs in groups.items():
        top = [r["top1"] for r in runs]
        timed = [r for r in runs if _timed(r, cpu)]
        n = len(timed) or None
        out.append({"key": key, "label": _label(key), "budget": key[0], "bits": key[1],
                    "method": key[2], "seeds": sorted(r["seed"] for r in runs),
                    "by_seed": {r["seed"]: r for r in runs}, "mean": sum(top) / len(top),
                    "min": min(top), "max": max(top), "timed": len(timed),
                    "wall": n and sum(r["wall_s"] for r in timed) / n,
                    "train_wall": n and sum(r["train_wall_s"] for r in timed) / n,
                    "scoring_share": n and sum(r["scoring_s"] / r["wall_s"] for r in timed) / n,
                    "spent": sum(r["spent"] for r in runs) / len(runs)})
    for s in out:
        controls = [c for c in out if c["method"] == "random_epoch"
                    and (c["budget"], c["bits"]) == (s["budget"], s["bits"])]
        if not controls or s["method"] == "random_epoch":
            continue
        control = max(controls, key=lambda c: c["mean"])
        pairs = [s["by_seed"][k]["top1"] - control["by_seed"][k]["top1"]
                 for k in s["by_seed"] if k in control["by_seed"]]
        if pairs:
            s["paired"] = {"control": control["label"], "n": len(pairs),
                           "mean": sum(pairs) / len(pairs), "min": min(pairs),
                           "max": max(pairs)}
    return sorted(out, key=lambda s: (s["budget"], -s["bits"], -s["mean"]))


def against_full(rows: list[dict], tolerances=(0.2, 0.5)) -> list[dict]:
    """How much of the full-data run each configuration saves: per bits, the reference is
    the full-data configuration of the largest budget run; for every other configuration,
    its top-1 mean less the reference's, its cost (data to training, evaluation left out:
    the curve's ``cost_s`` at the end) over the reference's, and for each tolerance t the
    seeds whose curve reached the reference's mean less t at an evaluated point and the
    mean cost share at that point. Costs come from timed runs only (``timing_machine``)."""
    cpu = timing_machine(rows)
    summaries = summarise(rows)
    out = []
    for bits in sorted({s["bits"] for s in summaries}, reverse=True):
        fulls = [s for s in summaries if s["bits"] == bits and s["method"] == "full"]
        if not fulls:
            continue
        ref = max(fulls, key=lambda s: s["budget"])
        ref_costs = [r["curve"][-1]["cost_s"] for r in ref["by_seed"].values()
                     if _timed(r, cpu) and r["curve"]]
        ref_cost = sum(ref_costs) / len(ref_costs) if ref_costs else None
        for s in summaries:
            if s["bits"] != bits or s is ref:
                continue
            runs = list(s["by_seed"].values())
            timed = [r["curve"][-1]["cost_s"] for r in runs if _timed(r, cpu) and r["curve"]]
            row = {"label": s["label"], "budget": s["budget"], "bits": bits,
                   "reference": ref["label"], "reference_budget": ref["budget"],
                   "reference_mean": ref["mean"], "delta": s["mean"] - ref["mean"],
                   "seeds": len(runs),
                   "cost_ratio": (sum(timed) / len(timed) / ref_cost
                                  if timed and ref_cost else None), "within": {}}
            for t in tolerances:
                goal = ref["mean"] - t
                reached, shares = 0, []
                for r in runs:
                    hit = next((c for c in r["curve"] if c["top1"] >= goal), None)
                    if hit is None:
                        continue
                    reached += 1
                    if _timed(r, cpu) and ref_cost:
                        shares.append(hit["cost_s"] / ref_cost)
                row["within"][t] = {"reached": reached,
                                    "share": sum(shares) / len(shares) if shares else None}
            out.append(row)
    return out


def render_against_full(rows: list[dict]) -> list[str]:
    table = against_full(rows)
    if not table:
        return []
    lines = ["", "Against the full-data run (per bits, the full configuration of the largest "
             "budget run): top-1 mean less its mean, cost (evaluation left out, timed runs) "
             "over its cost, and for 0.2 and 0.5 below its mean the seeds that got there at "
             "an evaluated point (a quarter, half, three quarters, end) and the cost share "
             "there:", "",
             "| W/A | B | method | full reference | top-1 vs full | cost vs full | "
             "within 0.2: seeds, cost | within 0.5: seeds, cost |", "|" + " --- |" * 8]

    def cell(w, n):
        share = f", {w['share']:.2f}x" if w["share"] is not None else ""
        return f"{w['reached']} of {n}{share}"

    for r in table:
        ratio = f"{r['cost_ratio']:.2f}x" if r["cost_ratio"] is not None else "-"
        lines.append(f"| W{r['bits']}A{r['bits']} | {r['budget']} | {r['label']} | "
                     f"{r['reference']} (B = {r['reference_budget']}, "
                     f"{r['reference_mean']:.2f}) | {r['delta']:+.2f} | {ratio} | "
                     f"{cell(r['within'][0.2], r['seeds'])} | "
                     f"{cell(r['within'][0.5], r['seeds'])} |")
    return lines


def render(rows: list[dict]) -> str:
    if not rows:
        return "(no runs yet)"
    cpu = timing_machine(rows)
    lines = ["| B | W/A | method | seeds | top-1 mean | min-max | paired vs best random_epoch "
             "(mean, min-max) | spent | wall s (no eval), timed runs | scoring share |",
             "|" + " --- |" * 10]
    for s in summarise(rows):
        p = s.get("paired")
        paired = (f"{p['mean']:+.2f} ({p['min']:+.2f} to {p['max']:+.2f}), {p['n']} pairs"
                  if p else "control" if s["method"] == "random_epoch" else "-")
        wall = f"{s['train_wall']:.0f} ({s['timed']})" if s["timed"] else "- (0)"
        share = f"{100 * s['scoring_share']:.1f}%" if s["timed"] else "-"
        lines.append(f"| {s['budget']} | W{s['bits']}A{s['bits']} | {s['label']} | "
                     f"{','.join(map(str, s['seeds']))} | {s['mean']:.2f} | "
                     f"{s['min']:.2f}-{s['max']:.2f} | {paired} | {s['spent']:.2f} | "
                     f"{wall} | {share} |")
    lines += render_against_full(rows)
    lines += ["", f"Wall times and scoring shares above are the means of the timed runs: those "
              f"on the {cpu} machine, not beside other jobs and not resumed across sittings "
              "(the lent 2-core machines differ, and an AVX2 one trains 1.7-2x slower). "
              "Every run:", "",
              "| run | top-1 | best | spent | wall s | eval s | scoring s | cpu | cores shared "
              "| resumed | commit |", "|" + " --- |" * 11]
    for r in sorted(rows, key=lambda r: r["name"]):
        lines.append(f"| {r['name']} | {r['top1']:.2f} | {r['best_top1']:.2f} | "
                     f"{r['spent']:.2f} | {r['wall_s']:.0f} | {r['eval_s']:.0f} | "
                     f"{r['scoring_s']:.0f} | {_cpu(r)} | "
                     f"{'yes' if r['cores_oversubscribed'] else 'no'} | "
                     f"{'yes' if r['resumed'] else 'no'} | {r['commit']} |")
    return "\n".join(lines) + "\n\n![top-1 against wall time](results/time_to_accuracy.png)"


COLOURS = {"full": "tab:purple", "random_epoch": "tab:olive", "random_cover": "tab:brown",
           "rho": "tab:blue", "infobatch": "tab:green", "acs": "tab:orange"}


def plot(rows: list[dict], path: Path = PLOT) -> None:
    """Top-1 against wall time (evaluation left out), a point a run, a colour a method
    (a marker a fraction; hollow where the wall time does not compare: another machine,
    beside other jobs or resumed), the full runs' mean as a line; a panel per budget and
    bits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["budget"], r["w_bits"]) for r in rows}) or [(6, 2)]
    cpu = timing_machine(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), squeeze=False)
    markers = {0.1: "o", 0.5: "s", 1.0: "*"}
    for ax, (budget, bits) in zip(axes[0], panels):
        runs = [r for r in rows if (r["budget"], r["w_bits"]) == (budget, bits)]
        seen = set()
        for r in runs:
            colour = COLOURS.get(r["method"], "tab:gray")
            label = _label(_key(r))
            timed = _timed(r, cpu)
            ax.scatter(r["train_wall_s"], r["top1"], edgecolors=colour,
                       facecolors=colour if timed else "none",
                       marker=markers.get(r["fraction"], "D"), s=50,
                       label=None if label in seen else label)
            seen.add(label)
        full = [r["top1"] for r in runs if r["method"] == "full"]
        if full:
            ax.axhline(sum(full) / len(full), color=COLOURS["full"], ls="--", lw=1,
                       label=f"full data, mean of {len(full)}")
        ax.set_title(f"CIFAR-10 ResNet-20 W{bits}A{bits}, budget {budget} epochs")
        ax.set_xlabel(f"wall s, scoring in, evaluation out (2-core {cpu};\n"
                      "hollow: another machine, shared cores or resumed)")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        if runs:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--only", nargs="*", default=None, help="run names to run")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no new run after this many minutes")
    p.add_argument("--list", action="store_true", help="print the plan's run names")
    p.add_argument("--redo", nargs="+", default=[], metavar="NAME",
                   help="run these again from scratch (records to the superseded file)")
    p.add_argument("--reason", default=None, help="why the --redo runs are redone")
    args = p.parse_args()
    results = Results(Path(args.results) if args.results else RESULTS)
    runs_dir = Path(args.runs_dir) if args.runs_dir else RUNS_DIR
    if args.list:
        for row in PLAN:
            print(run_name(*row), "done" if results.has(run_name(*row)) else "")
        return
    plot_path = Path(args.results).with_suffix(".png") if args.results else PLOT
    if args.render:
        plot(results.load(), plot_path)
    if rendered(args, results, render, README, TABLE_START, TABLE_END):
        return
    if args.redo:
        results.supersede(args.redo, args.reason, runs_dir)
    from resumable import start

    info = start(args, threads=machine()["threads"])
    t0 = time.perf_counter()
    for row in PLAN:
        name = run_name(*row)
        if results.has(name) or (args.only and name not in args.only):
            continue
        if args.max_minutes and (time.perf_counter() - t0) / 60 > args.max_minutes:
            print(f"time budget reached before {name}; run again to continue", flush=True)
            break
        run(results, row, info, args.limit_train, runs_dir)
    plot(results.load(), plot_path)


if __name__ == "__main__":
    main()
