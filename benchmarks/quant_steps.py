"""Where the LSQ step sizes of the QAT runs ended: for every finished run of
``benchmarks/qat_cifar10.py`` (``benchmarks/runs/*/model.pt``), how many step parameters are
below zero, and for the 8-bit first conv and last fc (``first_last: int8``) how far their
weight steps moved from the step 8-bit quantization of the teacher's weights would use
(max |w| / 127 per channel) and how many of the 127 levels the largest weight of a channel
reaches (max |w| / |step|).

The quantizer uses |step| since commit 907dac0; before that a negative step made an
unsigned activation quantizer output zeros. A step parameter below zero means it crossed
zero during training. Writes ``benchmarks/results/quant_steps.json``.

    python benchmarks/quant_steps.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from coreset_curate.common.atomic import write_text

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "recipes" / "teachers" / "cifar10_resnet20_fp.pt"


def main() -> None:
    teacher = torch.load(TEACHER, map_location="cpu", weights_only=True)
    rows = []
    for model_path in sorted((ROOT / "benchmarks" / "runs").glob("*/model.pt")):
        state = torch.load(model_path, map_location="cpu", weights_only=True)
        steps = {k: v for k, v in state.items() if k.endswith("_quant.step")}
        if not steps:
            continue
        negative = {k[: -len(".step")]: int((v < 0).sum()) for k, v in steps.items()
                    if (v < 0).any()}
        row = {"run": model_path.parent.name, "step_tensors": len(steps),
               "negative": negative, "layers": {}}
        for layer in ("conv1", "fc"):
            w, s = state[f"{layer}.weight"], state[f"{layer}.w_quant.step"]
            reach = w.flatten(1).abs().amax(1)
            start = teacher[f"{layer}.weight"].flatten(1).abs().amax(1) / 127
            levels = (reach / s.abs()).round()
            row["layers"][layer] = {
                "channels": len(s),
                "median_step_over_8bit_start": round(float((s.abs() / start).median()), 2),
                "median_levels_reached": float(levels.median()),
                "min_levels_reached": float(levels.min()),
            }
        rows.append(row)
        c, f = row["layers"]["conv1"], row["layers"]["fc"]
        print(f"{row['run']:42s} negative steps in {len(negative):2d} tensors | conv1 step "
              f"x{c['median_step_over_8bit_start']:5.2f}, levels median "
              f"{c['median_levels_reached']:5.0f} min {c['min_levels_reached']:3.0f} | fc step "
              f"x{f['median_step_over_8bit_start']:5.2f}, levels median "
              f"{f['median_levels_reached']:5.0f}")
    path = ROOT / "benchmarks" / "results" / "quant_steps.json"
    write_text(path, json.dumps(rows, indent=2))
    print(f"wrote {path} ({len(rows)} runs)")


if __name__ == "__main__":
    main()
