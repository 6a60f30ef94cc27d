"""The audit report: ``audit.parquet``, a self-contained ``report.html`` and ``summary.md``.

The HTML page has no outside references (plots and thumbnails are PNGs embedded as data
URIs), so it opens offline and can be mailed as one file. Everything that comes from the
dataset or the command line (class names, paths, ids) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np

from ..common.atomic import write_text
from ..data import LabelledRows, load_batches
from ..common.tables import write_table
from ..common.checks import non_negative_int

__all__ = ["write_report", "render_html", "render_markdown"]

_GROUPS = (("mislabeled", "Likely mislabeled",
            "the full-precision reference also disagrees with the given label"),
           ("fragile", "Quantization-fragile",
            "the reference agrees with the label; only the quantized model does not"),
           ("ambiguous", "Ambiguous", "the reference agrees, but without confidence"),
           ("unknown", "Flagged (no reference scores)", "kind needs the reference columns"))


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(result) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    t = result.table
    flag = np.asarray(t.column("flag"))
    out = {}
    cols = [c for c in ("evs", "ds") if t.column(c).null_count < len(t)]
    fig, axes = plt.subplots(1, len(cols) + 1, figsize=(4.2 * (len(cols) + 1), 3.0))
    for ax, c in zip(axes, ["suspicion", *cols]):
        v = np.asarray(t.column(c).to_numpy(zero_copy_only=False), float)
        bins = np.linspace(np.nanmin(v), np.nanmax(v) + 1e-9, 41)
        ax.hist(v[~flag], bins=bins, alpha=0.6, label=f"kept ({(~flag).sum()})", density=True)
        if flag.any():
            ax.hist(v[flag], bins=bins, alpha=0.6, label=f"flagged ({flag.sum()})",
                    density=True)
        ax.set_title(c)
        ax.legend(fontsize=7)
    out["hist"] = _png(fig)
    k = len(result.class_names)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * k + 1.5), 3.0))
    ax.bar(np.arange(k), 100 * result.noise_rates)
    ax.set_xticks(np.arange(k))
    ax.set_xticklabels(result.class_names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("estimated wrong labels (%)")
    out["rates"] = _png(fig)
    if result.subset_share:
        fig, ax = plt.subplots(figsize=(5.0, 2.8))
        ep = [r["epoch"] for r in result.subset_share]
        ax.plot(ep, [100 * r["flagged"] for r in result.subset_share], "o-", label="flagged")
        if "truly_noisy" in result.subset_share[0]:
            ax.plot(ep, [100 * r["truly_noisy"] for r in result.subset_share], "s--",
                    label="truly noisy")
        ax.set_xlabel("epoch")
        ax.set_ylabel("% of the epoch's subset")
        ax.legend(fontsize=7)
        out["subset"] = _png(fig)
    return out


def _thumb(image: np.ndarray, side: int = 96) -> str:
    """A (C, H, W) uint8 image as an inline PNG about ``side`` pixels wide: small images
    enlarged by a whole factor (pixels kept sharp), large ones shrunk."""
    from PIL import Image

    arr = np.asarray(image)
    arr = arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))
    img = Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)))
    if img.width <= side:
        scale = max(1, side // img.width)
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    else:
        img = img.resize((side, max(1, round(img.height * side / img.width))), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _summary_numbers(result) -> dict:
    t = result.table
    n = t.num_rows
    return {"samples": n, "flagged": result.num_flagged,
            "flagged_pct": 100.0 * result.num_flagged / max(n, 1), **result.kind_counts()}


def _name(result, c) -> str:
    if c is None:
        return "-"
    return result.class_names[c] if 0 <= c < len(result.class_names) else str(c)


def _confusion(result) -> tuple[list[int], list[list[int]]]:
    """Given (rows) x suggested (columns) counts over the flagged samples."""
    t = result.table
    flag = np.asarray(t.column("flag"))
    given = np.asarray(t.column("given_label"))[flag]
    sugg = t.column("suggested_label").fill_null(-1).to_numpy()[flag]
    k = len(result.class_names)
    m = np.zeros((k, k + 1), dtype=np.int64)  # last column: no suggestion
    np.add.at(m, (given, np.where(sugg < 0, k, sugg)), 1)
    return list(range(k)), m.tolist()


def render_html(result, *, data=None, max_examples: int = 48) -> str:
    """The audit's self-contained HTML page (plots and thumbnails inline).

    Class names and anything else from the dataset are HTML-escaped.

    Args:
        result: an ``AuditResult``.
        data: the ``ImageData`` the scores came from, for thumbnails of the flagged
            samples (``None``: no thumbnails).
        max_examples: how many flagged samples the page shows.

    Returns:
        The page as a string.
    """
    s = _summary_numbers(result)
    plots = _plots(result)
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             "<title>coreset-curate noise audit</title><style>",
             "body{font-family:sans-serif;margin:2em;max-width:1100px}",
             "table{border-collapse:collapse;font-size:13px}",
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}",
             ".ex{display:inline-block;margin:4px;text-align:center;font-size:11px;width:110px;"
             "vertical-align:top}.ex img{image-rendering:pixelated}</style></head><body>",
             "<h1>Noise audit</h1>",
             f"<p>{s['samples']:,} samples, scoring round(s) at epoch(s) "
             f"{_e(', '.join(map(str, result.epochs)))}; suspicion <code>"
             f"{_e(result.suspicion)}</code>. Sources: "
             f"{_e(', '.join(result.sources))}.</p>",
             f"<p><b>{s['flagged']:,} flagged ({s['flagged_pct']:.2f}%)</b>: "
             f"{s['mislabeled']:,} likely mislabeled, {s['fragile']:,} quantization-fragile, "
             f"{s['ambiguous']:,} ambiguous"
             + (f", {s['unknown']:,} without a reference view" if s["unknown"] else "")
             + ".</p>"]
    parts += _metrics_html(result)
    parts += _per_class_html(result, plots)
    parts += _confusion_html(result, plots)
    parts += _subset_html(result, plots)
    parts.append(_examples_html(result, data, max_examples))
    parts.append("</body></html>")
    return "\n".join(parts)


def _metrics_html(result) -> list[str]:
    """The flags against the true labels, where they are known."""
    parts: list[str] = []
    if result.metrics:
        parts.append("<h2>Against the true labels</h2><table><tr><th>flags</th><th>precision"
                     "</th><th>recall</th><th>F1</th><th>AUROC (suspicion)</th><th>flagged"
                     "</th><th>noisy</th></tr>")
        for key, label in (("flag", "all flags"), ("mislabeled_kind", "kind = mislabeled")):
            m = result.metrics[key]
            auroc = "-" if m["auroc"] is None else f"{m['auroc']:.4f}"
            parts.append(f"<tr><td>{label}</td><td>{m['precision']:.4f}</td><td>"
                         f"{m['recall']:.4f}</td><td>{m['f1']:.4f}</td><td>{auroc}</td><td>"
                         f"{m['flagged']:,}</td><td>{m['noisy']:,}</td></tr>")
        parts.append("</table>")
    return parts


def _per_class_html(result, plots: dict) -> list[str]:
    """The per-class table and the rates plot."""
    parts: list[str] = []
    t = result.table
    parts.append("<h2>Per class</h2><table><tr><th>class</th><th>samples</th><th>est. wrong "
                 "labels</th><th>flagged</th><th>mislabeled</th><th>fragile</th><th>threshold"
                 "</th></tr>")
    flag = np.asarray(t.column("flag"))
    given = np.asarray(t.column("given_label"))
    kinds = np.asarray(t.column("kind").to_pylist(), dtype=object)
    for c, name in enumerate(result.class_names):
        inc = given == c
        parts.append(
            f"<tr><td style='text-align:left'>{_e(name)}</td><td>{int(inc.sum()):,}</td>"
            f"<td>{100 * result.noise_rates[c]:.2f}%</td><td>{int((flag & inc).sum()):,}</td>"
            f"<td>{int(((kinds == 'mislabeled') & inc).sum()):,}</td>"
            f"<td>{int(((kinds == 'fragile') & inc).sum()):,}</td>"
            f"<td>{result.thresholds[c]:.3f}</td></tr>")
    parts.append(f"</table><p><img src='{plots['rates']}' alt='per-class rates'></p>")
    return parts


def _confusion_html(result, plots: dict) -> list[str]:
    """The flagged samples' given against suggested labels, and the score histograms."""
    parts: list[str] = []
    classes, conf = _confusion(result)
    parts.append("<h2>Flagged: given label (rows) vs suggested label (columns)</h2><table>"
                 "<tr><th></th>" + "".join(f"<th>{_e(n)}</th>" for n in result.class_names)
                 + "<th>none</th></tr>")
    for c in classes:
        parts.append(f"<tr><th>{_e(result.class_names[c])}</th>"
                     + "".join(f"<td>{v or ''}</td>" for v in conf[c]) + "</tr>")
    parts.append(f"</table><h2>Score distributions</h2><p><img src='{plots['hist']}' "
                 "alt='histograms'></p>")
    return parts


def _subset_html(result, plots: dict) -> list[str]:
    """The flagged share of each epoch's subset, where an index was given."""
    parts: list[str] = []
    if result.subset_share:
        parts.append("<h2>Flagged share of each epoch's subset</h2><table><tr><th>epoch</th>"
                     "<th>size</th><th>flagged</th><th>mislabeled kind</th>"
                     + ("<th>truly noisy</th>" if "truly_noisy" in result.subset_share[0]
                        else "") + "</tr>")
        for r in result.subset_share:
            parts.append(f"<tr><td>{r['epoch']}</td><td>{r['size']:,}</td><td>"
                         f"{100 * r['flagged']:.2f}%</td><td>{100 * r['mislabeled_kind']:.2f}%"
                         "</td>" + (f"<td>{100 * r['truly_noisy']:.2f}%</td>"
                                    if "truly_noisy" in r else "") + "</tr>")
        parts.append(f"</table><p><img src='{plots['subset']}' alt='subset share'></p>")
    return parts


def _examples_html(result, data, max_examples: int) -> str:
    t = result.table
    flag = np.asarray(t.column("flag"))
    if not flag.any():
        return "<h2>Flagged samples</h2><p>None.</p>"
    ids = np.asarray(t.column("sample_id"))
    susp = np.asarray(t.column("suspicion"))
    given = np.asarray(t.column("given_label"))
    sugg = t.column("suggested_label").to_pylist()
    kinds = np.asarray(t.column("kind").to_pylist(), dtype=object)
    images = isinstance(data, LabelledRows)  # in memory, or streamed
    parts = []
    for key, title, blurb in _GROUPS:
        rows = np.flatnonzero(kinds == key)
        if not len(rows):
            continue
        rows = rows[np.argsort(-susp[rows], kind="stable")][:max_examples]
        parts.append(f"<h2>{_e(title)} ({int((kinds == key).sum()):,})</h2><p>{_e(blurb)}; "
                     f"the {len(rows)} most suspicious:</p><div>")
        pos = data.positions(ids[rows]) if images else None
        # one batch of just these rows (a streamed dataset decodes their centre crops)
        pixels = next(load_batches(data, [pos]))[1] if images else None
        for j, r in enumerate(rows):
            img = (f"<img src='{_thumb(pixels[j].numpy())}' alt=''><br>"
                   if images else "")
            parts.append(f"<div class='ex'>{img}id {_e(ids[r])}<br>given <b>"
                         f"{_e(_name(result, int(given[r])))}</b><br>suggested "
                         f"<b>{_e(_name(result, sugg[r]))}</b><br>suspicion "
                         f"{susp[r]:.3f}</div>")
        parts.append("</div>")
    return "\n".join(parts)


def _md(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_markdown(result) -> str:
    """The audit's Markdown summary: flagged counts, metrics when known, a row per class.

    Args:
        result: an ``AuditResult``.

    Returns:
        The Markdown text (class names escaped for tables).
    """
    s = _summary_numbers(result)
    lines = ["# Noise audit", "",
             f"{s['samples']:,} samples; scoring round(s) at epoch(s) "
             f"{', '.join(map(str, result.epochs))}; suspicion `{result.suspicion}`.", "",
             f"**{s['flagged']:,} flagged ({s['flagged_pct']:.2f}%)**: {s['mislabeled']:,} likely "
             f"mislabeled, {s['fragile']:,} quantization-fragile, {s['ambiguous']:,} ambiguous"
             + (f", {s['unknown']:,} without a reference view" if s["unknown"] else "") + ".",
             ""]
    if result.metrics:
        lines += ["| flags | precision | recall | F1 | AUROC |", "| --- | --- | --- | --- | --- |"]
        for key in ("flag", "mislabeled_kind"):
            m = result.metrics[key]
            auroc = "-" if m["auroc"] is None else f"{m['auroc']:.4f}"
            lines.append(f"| {key} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} "
                         f"| {auroc} |")
        lines.append("")
    lines += ["| class | samples | est. wrong labels | flagged |", "| --- | --- | --- | --- |"]
    flag = np.asarray(result.table.column("flag"))
    given = np.asarray(result.table.column("given_label"))
    for c, name in enumerate(result.class_names):
        inc = given == c
        lines.append(f"| {_md(name)} | {int(inc.sum()):,} | {100 * result.noise_rates[c]:.2f}% "
                     f"| {int((flag & inc).sum()):,} |")
    return "\n".join(lines) + "\n"


def write_report(result, out_dir: str | os.PathLike, *, data=None, overwrite: bool = False,
                 max_examples: int = 48) -> dict[str, Path]:
    """Write ``audit.parquet``, ``report.html`` and ``summary.md`` into ``out_dir``.

    Both pages are rendered before anything is written, and every file is written
    atomically, so a failure leaves an earlier report as it was.

    Args:
        result: an ``AuditResult`` (from ``audit``).
        out_dir: the report folder (created if missing).
        data: the ``ImageData`` the scores came from, for thumbnails.
        overwrite: replace an existing report.
        max_examples: how many flagged samples the HTML page shows.

    Returns:
        ``{"table": ..., "html": ..., "markdown": ...}``, the paths written.

    Raises:
        NotADirectoryError: ``out_dir`` is a file.
        FileExistsError: a report file exists and ``overwrite`` is False.
        ValueError: ``max_examples`` is not a non-negative integer.
    """
    non_negative_int("max_examples", max_examples)
    out = Path(out_dir)
    paths = {"table": out / "audit.parquet", "html": out / "report.html",
             "markdown": out / "summary.md"}
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; give a folder for the report")
    existing = [p for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass overwrite=True (--overwrite) to "
                              "replace the report")
    page = render_html(result, data=data, max_examples=max_examples)  # before any write
    summary = render_markdown(result)
    out.mkdir(parents=True, exist_ok=True)
    write_table(result.table, paths["table"], overwrite=True)
    write_text(paths["html"], page)
    write_text(paths["markdown"], summary)
    return paths
