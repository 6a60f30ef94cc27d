"""The time-to-accuracy benchmark's summary: every seed counts for accuracy, and only runs
whose wall time compares (the most common machine, not beside other jobs, not resumed)
count for wall time and scoring share."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from time_to_accuracy import against_full, render, summarise, timing_machine  # noqa: E402


def row(method, seed, top1, wall, cpu="AVX512", shared=False, resumed=False, scoring=0.0):
    return {"name": f"b6_{method}_s{seed}", "budget": 6, "w_bits": 2, "method": method,
            "fraction": 0.5, "epochs": 12, "R": 1, "free_scores": False, "options": {},
            "seed": seed, "top1": top1, "best_top1": top1, "wall_s": wall + 30.0,
            "train_wall_s": wall, "eval_s": 30.0, "scoring_s": scoring, "spent": 6.0,
            "cores_oversubscribed": shared, "resumed": resumed, "commit": "abc1234",
            "machine": {"capability": cpu}}


ROWS = [row("random_epoch", 0, 86.0, 1000.0), row("random_epoch", 1, 86.4, 1900.0, cpu="AVX2"),
        row("random_epoch", 2, 86.2, 3000.0, shared=True),
        row("rho", 0, 86.5, 1100.0, scoring=113.0), row("rho", 1, 86.3, 1200.0, resumed=True),
        row("rho", 2, 86.1, 2000.0, cpu="AVX2", shared=True)]


def test_timing_machine_is_the_kind_with_most_comparable_runs():
    assert timing_machine(ROWS) == "AVX512"  # 2 comparable runs against AVX2's 1
    more = [row("rho", k, 86.0, 1900.0, cpu="AVX2") for k in (3, 4)]
    assert timing_machine(ROWS + more) == "AVX2"
    assert timing_machine([row("rho", 0, 86.0, 1.0, shared=True)]) is None


def test_wall_time_counts_only_comparable_runs_and_accuracy_every_seed():
    by = {s["method"]: s for s in summarise(ROWS)}
    control, rho = by["random_epoch"], by["rho"]
    assert control["mean"] == (86.0 + 86.4 + 86.2) / 3 and control["seeds"] == [0, 1, 2]
    assert (control["timed"], control["train_wall"]) == (1, 1000.0)
    assert (rho["timed"], rho["train_wall"], rho["wall"]) == (1, 1100.0, 1130.0)
    assert rho["scoring_share"] == 113.0 / 1130.0
    assert rho["paired"]["n"] == 3 and abs(rho["paired"]["mean"] - 0.1) < 1e-9


def test_configuration_without_a_comparable_run_shows_no_wall_time():
    text = render([row("random_epoch", 0, 86.0, 1000.0, shared=True),
                   row("rho", 0, 86.5, 1100.0)])
    control = next(line for line in text.splitlines() if "| random_epoch" in line)
    assert control.endswith("| - (0) | - |")
    assert "| 1100 (1) |" in text and "on the AVX512 machine" in text


def curved(method, budget, seed, points, **kw):
    """A row whose curve is ``points`` [(top1, cost_s), ...]; its top-1 is the last."""
    r = row(method, seed, points[-1][0], points[-1][1], **kw)
    r["budget"] = budget
    r["curve"] = [{"epoch": i + 1, "top1": t, "spent": 0.0, "cost_s": c}
                  for i, (t, c) in enumerate(points)]
    return r


def test_against_full_takes_the_largest_full_budget_and_counts_seeds_reaching_it():
    rows = [curved("full", 6, 0, [(85.0, 500.0), (86.0, 1000.0)]),
            curved("full", 12, 0, [(86.0, 1000.0), (87.0, 2000.0)]),
            curved("full", 12, 1, [(86.2, 1000.0), (87.4, 2000.0)]),   # mean 87.2
            curved("infobatch", 12, 0, [(86.8, 600.0), (87.1, 1200.0)]),
            curved("infobatch", 12, 1, [(86.5, 700.0), (86.9, 1400.0)], shared=True)]
    got = {(r["label"].split(" ")[0], r["budget"]): r for r in against_full(rows)}
    assert set(got) == {("full", 6), ("infobatch", 12)}  # the B = 12 full is the reference
    info = got[("infobatch", 12)]
    assert info["reference_budget"] == 12 and abs(info["reference_mean"] - 87.2) < 1e-9
    assert abs(info["delta"] - (87.0 - 87.2)) < 1e-9
    assert info["cost_ratio"] == 1200.0 / 2000.0   # the shared-cores seed has no cost
    # within 0.2 (>= 87.0): seed 0 at its end; within 0.5 (>= 86.7): seed 0 at its first
    # point and seed 1 at its end, the cost from seed 0 only
    assert info["within"][0.2] == {"reached": 1, "share": 1200.0 / 2000.0}
    assert info["within"][0.5] == {"reached": 2, "share": 600.0 / 2000.0}
    assert got[("full", 6)]["within"][0.5]["reached"] == 0
    text = render(rows)
    assert "| W2A2 | 12 | infobatch" in text and "| 2 of 2, 0.30x |" in text
