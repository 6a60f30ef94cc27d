"""Where benchmarks keep what they measured: a JSON list per benchmark under ``$OUT`` when
that is set (the device machine's output folder), else under ``benchmarks/results/``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from coreset_curate.common.atomic import write_text

RESULTS = Path(__file__).resolve().parent / "results"


def append_record(filename: str, record: dict) -> Path:
    """Add ``record`` to the list in ``filename`` (created if missing), atomically."""
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    records = json.loads(path.read_text()) if path.exists() else []
    records.append(record)
    write_text(path, json.dumps(records, indent=2))
    return path
