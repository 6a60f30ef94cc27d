"""``report.html`` of a ``curate`` run: before and after, stage by stage."""

from __future__ import annotations

import html
import json
from pathlib import Path


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def _report(summary: dict, out: Path) -> str:
    """One page: the before/after figures and a row per stage (every value escaped)."""
    e = html.escape
    pct = (lambda v: "-" if v is None else f"{100 * v:.2f}%")
    head = [("wrong labels the audit estimates", pct(summary["estimated_noise_rate"])),
            ("wrong labels in the training split, as given", pct(summary["wrong_labels_before"])),
            ("wrong labels after cleaning", pct(summary["wrong_labels_after"])),
            ("wrong labels in the student's subsets", pct(summary["student_noisy_share"])),
            ("teacher top-1 (labels as given)", _fmt(summary["teacher_top1"])),
            ("teacher top-1 (cleaned labels)", _fmt(summary["teacher_clean_top1"])),
            ("quantized student top-1", _fmt(summary["student_top1"])),
            ("wall time of all stages (s)", _fmt(summary["wall_s"]))]
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in head)
    stages = "".join(
        f"<tr><td>{e(name)}</td><td><code>{e(json.dumps(rec, sort_keys=True, default=str))}"
        f"</code></td></tr>" for name, rec in summary["stages"].items() if rec is not None)
    links = "".join(f'<li><a href="{e(p)}/report.html">{e(p)}</a></li>'
                    for p in ("audit", "final_audit") if (out / p / "report.html").exists())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>curate</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
            "td,th{padding:.3em .8em;text-align:left;vertical-align:top}"
            "code{font-size:.85em;word-break:break-all}</style></head><body>"
            f"<h1>From noisy labels to a quantized model</h1><table>{rows}</table>"
            f"<h2>Stages</h2><table>{stages}</table><h2>Audits</h2><ul>{links}</ul>"
            "</body></html>")
