"""Every Python block of the README and of the documentation site runs as written.

The blocks of one page run in order in one namespace (a later block may use what an
earlier one defined), in an empty working directory; each page must also leave the files
its text says it writes.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.M | re.S)

# page -> files its blocks say they write (relative to the working directory)
WRITES = {
    "README.md": ["run/index.parquet", "run/scores/epoch_0004.parquet"],
    "docs/guide/own-loop.md": ["run/index.parquet"],
    "docs/guide/library.md": ["index.parquet"],
    "docs/guide/huggingface.md": ["run/index.parquet", "subset3"],
    "docs/guide/noise-audit.md": ["audit/report.html", "audit/audit.parquet", "clean.parquet"],
    "docs/guide/extending.md": [],
}


def _pages() -> list[str]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [str(p.relative_to(ROOT)) for p in pages if BLOCK.search(p.read_text())]


def test_every_page_with_python_blocks_is_checked_for_its_outputs():
    assert sorted(_pages()) == sorted(WRITES)


@pytest.mark.parametrize("page", sorted(WRITES))
def test_python_blocks_run_as_written(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = BLOCK.findall((ROOT / page).read_text())
    assert blocks, f"{page} has no python block"
    scope: dict = {"__name__": "__docs__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{page} (python block {i + 1})", "exec"), scope)
    missing = [f for f in WRITES[page] if not (tmp_path / f).exists()]
    assert not missing, f"{page}'s blocks did not write {missing}"
