"""What the resumable benchmarks share: a results file of named records (a finished row is
skipped when the benchmark runs again), training that resumes from a run's last epoch,
finished stages whose files later rows need (a teacher) kept or rebuilt when the run
folders are gone, the record of the machine and code, and the command line (smoke runs,
--render)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from coreset_curate.common.atomic import atomic_path, write_text
from coreset_curate.common.checkpoint import sha256_of
from readme_table import write_between

ROOT = Path(__file__).resolve().parents[1]
# copies of finished stages' files that later rows need, small enough to commit (run
# folders are ignored by git, so a new machine has none of them)
KEPT = ROOT / "benchmarks" / "kept"
# a rebuilt stage must reproduce these fields of its record where the record has them
SAME_FIELDS = ("top1", "best_top1", "ap", "ap50", "ap75", "best_ap", "flagged_mislabeled",
               "flags", "noisy_share_relabeled")
# how far apart two floats of those fields may be and still be the same: a float32 sum in
# another order moves an AUROC in its ninth digit; a top-1 on 10,000 test images moves by
# 0.01 (1e-4 relative) or not at all
REL_TOL = 1e-6
# the suffix a rebuilt stage's files get when they do not reproduce its record: set aside,
# not used by the next pass, not lost
NOT_REPRODUCED = ".not-reproduced"


def same_value(a, b) -> bool:
    """Whether two record values are the same: ints, strings and bools exactly, floats to
    ``REL_TOL``, dicts and lists item by item."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if not (isinstance(a, (int, float)) and isinstance(b, (int, float))) or (
            isinstance(a, int) and isinstance(b, int)):
        return a == b
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=0.0)


class Results:
    """A JSON list of records, each with a unique ``name``, rewritten atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> list:
        return json.loads(self.path.read_text()) if self.path.exists() else []

    def has(self, name: str) -> bool:
        return any(r["name"] == name for r in self.load())

    def save(self, record: dict) -> None:
        results = [r for r in self.load() if r["name"] != record["name"]] + [record]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.path, json.dumps(results, indent=2))

    def supersede(self, names: list[str], reason: str | None, runs_dir: Path,
                  paths=None) -> None:
        """Move the records of ``names`` out of the results (into ``STEM_superseded.json``
        beside them, with the reason and date) and delete their run folders under
        ``runs_dir`` (or the files and folders ``paths(name)`` lists, where a benchmark
        lays them out otherwise), so that the benchmark's next pass runs them again. A
        name with a folder and no record yet (a row stopped part-way) loses its folder."""
        import shutil

        if not reason:
            raise SystemExit("--redo needs --reason (kept beside the superseded records)")
        paths = paths or (lambda n: [runs_dir / n])
        results = self.load()
        have = {r["name"] for r in results}
        unknown = sorted(n for n in names
                         if n not in have and not any(p.exists() for p in paths(n)))
        if unknown:
            raise SystemExit(f"no results or run folders named {unknown}")
        path = self.path.with_name(f"{self.path.stem}_superseded.json")
        old = json.loads(path.read_text()) if path.exists() else []
        old += [{**r, "superseded": {"reason": reason, "date": time.strftime("%Y-%m-%d")}}
                for r in results if r["name"] in names]
        write_text(path, json.dumps(old, indent=2))  # first: a crash here loses nothing
        write_text(self.path, json.dumps([r for r in results if r["name"] not in names],
                                         indent=2))
        for name in names:
            for p in paths(name):
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
            print(f"{name}: superseded ({reason}); it runs again", flush=True)


def stage(results: Results, name: str, out: Path, build, files: tuple[str, ...],
          keep: str | None = None) -> Path:
    """Run folder ``out`` of the finished stage ``name`` (a teacher, an audit), holding
    ``files`` (paths inside ``out``): built by ``build()``, which writes them and returns
    the stage's record, when ``results`` has no record of it.

    Run folders are not kept from one machine to the next, so a finished stage's record
    may outlive its files. Then they come back from ``KEPT/keep/`` (with ``keep``, the
    stage's files are copied there when it finishes, with their sha256 in the record:
    commit them), or else the stage is built again and must reproduce its record (the
    same ``SAME_FIELDS``: counts exactly, floats to ``REL_TOL``). A stage that does not
    reproduce stops the benchmark with the ``--redo`` to run (later rows were made from
    the old files), and its new files are renamed ``FILE.not-reproduced``, so that the
    next pass neither takes them for the stage's nor loses them."""
    record = next((r for r in results.load() if r["name"] == name), None)
    if record is not None and all((out / f).exists() for f in files):
        return out
    kept = KEPT / keep if keep else None
    if record is not None and kept is not None and all((kept / f).exists() for f in files):
        sums = record.get("sha256", {})
        bad = [f for f in files if sums.get(f) != sha256_of(kept / f)]
        if bad:
            raise SystemExit(f"{name}: the kept {', '.join(bad)} in {kept} differ from the "
                             "sha256 in its record; restore them with git or --redo it")
        for f in files:
            _copy(kept / f, out / f)
        print(f"{name}: files restored from {kept}", flush=True)
        return out
    if record is not None:
        print(f"{name}: finished before, but {out} lacks its files (a new machine?): "
              "building it again; it must reproduce its record", flush=True)
    new = build()
    missing = [f for f in files if not (out / f).exists()]
    if missing:
        raise RuntimeError(f"{name}: building it wrote no {missing} in {out}")
    if kept is not None:
        new["sha256"] = {f: sha256_of(out / f) for f in files}
    if record is None:
        results.save(new)
    else:
        same = [k for k in SAME_FIELDS if k in record]
        differ = [k for k in same if not same_value(record[k], new.get(k))]
        if not same or differ:
            for f in files:
                (out / f).replace(out / f"{f}{NOT_REPRODUCED}")
            raise SystemExit(
                f"{name}: built again, it does not reproduce its record "
                f"({'in ' + ', '.join(differ) if differ else 'nothing to compare'}: this "
                f"machine, threads or code?); the rows made from it stand on the old "
                f"files: run again with --redo {name} and those rows")
        if kept is not None:
            results.save({**record, "sha256": new["sha256"]})
        print(f"{name}: built again, the same as its record ({', '.join(same)})", flush=True)
    if kept is not None:
        for f in files:
            _copy(out / f, kept / f)
    return out


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def train(config, out: Path) -> dict:
    """Run ``config`` into ``out``, resuming from its last checkpoint when there is one."""
    from coreset_curate.training import run_training

    resume = (out / "last.pt").exists()
    print(f"{out}: {'resuming' if resume else 'starting'}", flush=True)
    return run_training(config, out, resume=resume, overwrite=not resume)


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every resumable benchmark takes (add its own to the parser)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--limit-train", type=int, default=None, help="smoke runs only")
    p.add_argument("--runs-dir", default=None, help="(smoke runs) instead of benchmarks/runs")
    p.add_argument("--results", default=None, help="(smoke runs) instead of the results file")
    p.add_argument("--render", action="store_true",
                   help="only write the results into the benchmark's page under docs/benchmarks/")
    return p


def start(args, **machine) -> dict:
    """Log to stderr and return the record's ``machine``/``date``/``commit`` fields."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    # the vector instructions torch's kernels (and compiled code) were chosen for: runs
    # on machines with other ones need not agree to the last digit
    return {"machine": {"cpu": platform.processor() or platform.machine(),
                        "capability": torch.backends.cpu.get_cpu_capability(),
                        "cores": os.cpu_count(), "torch": torch.__version__, **machine},
            "date": time.strftime("%Y-%m-%d"), "commit": commit,
            **({"limit_train": args.limit_train} if args.limit_train else {})}


def rendered(args, results: Results, render, readme: Path, start_mark: str,
             end_mark: str) -> bool:
    """With ``--render``: write ``render(records)`` between the README's markers, print it
    and return True (the benchmark stops there); otherwise False."""
    if not args.render:
        return False
    text = render(results.load())
    write_between(readme, start_mark, end_mark, text)
    print(text)
    return True
