"""The README's generated tables: the text between a start and an end marker is replaced
by a benchmark's rendering of its results (written atomically, the rest kept as it was)."""

from __future__ import annotations

from pathlib import Path

from coreset_curate.common.atomic import write_text


def write_between(readme: Path, start: str, end: str, body: str) -> None:
    text = readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{readme.name} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    write_text(readme, f"{head}{start}\n{body}\n{end}{tail}")
