"""What classification adds to ``coreset-curate``: ``demo --task classification``, the
default demo (``coreset_curate.cli.tasks`` reads this module)."""

from __future__ import annotations

DEMO_HELP = "a CNN on scikit-learn's digits"
DEMO_FP_EPOCHS = 30


def run_demo(out: str, chosen: dict, overwrite: bool) -> str:
    """``coreset-curate demo``: the demo into ``out`` with the options ``chosen`` on the
    command line; returns the summary it prints."""
    from .demo import DemoConfig, format_summary, run_demo as demo

    summary = demo(out, DemoConfig(**chosen), overwrite=overwrite)
    return format_summary(summary)
