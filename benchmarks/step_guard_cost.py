"""Cost of the quantizer's |step| guard: a CIFAR ResNet-20 W2A2 training step (batch 128,
channels-last, forward + backward + SGD) with ``LsqQuantizer.forward`` as it is, against
the same forward without ``abs().clamp_min()`` on the step (what it was before commit
907dac0). The two alternate ``--repeats`` times, ``--steps`` timed steps each after one
untimed; the best of each is kept. Appends to ``benchmarks/results/step_guard_cost.json``.

    python benchmarks/step_guard_cost.py
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

from results_file import append_record


def main() -> None:
    import coreset_curate.quant as quant
    from coreset_curate.tasks.classification.models import create_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    x = torch.randn(128, 3, 32, 32)
    y = torch.randint(0, 10, (128,))
    quant.quantize_model(model, 2, 2, calibration=[x])
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-9)
    guarded = quant.LsqQuantizer.forward

    def unguarded(self, v):
        qn, qp = self.bounds
        per_step = v[0].numel() if not self.num_channels else v.numel() // self.num_channels
        s = quant.grad_scale(self.step, 1.0 / math.sqrt(per_step * qp))
        s = s.view(-1, *([1] * (v.dim() - 1))) if self.num_channels else s.reshape(())
        return quant.round_ste(torch.clamp(v / s, qn, qp)) * s

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    times = {"guarded": [], "unguarded": []}
    for _ in range(args.repeats):
        for name, forward in (("guarded", guarded), ("unguarded", unguarded)):
            quant.LsqQuantizer.forward = forward
            step()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps)
    quant.LsqQuantizer.forward = guarded
    best = {k: min(v) for k, v in times.items()}
    record = {"benchmark": "step_guard_cost", "model": "resnet20 W2A2", "batch": 128,
              "ms_per_step": {k: [round(t * 1000, 1) for t in v] for k, v in times.items()},
              "best_ms": {k: round(v * 1000, 1) for k, v in best.items()},
              "overhead": round(best["guarded"] / best["unguarded"] - 1, 4),
              "device": f"cpu ({os.cpu_count()} cores)", "threads": torch.get_num_threads(),
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"guarded {record['best_ms']['guarded']} ms, unguarded "
          f"{record['best_ms']['unguarded']} ms a step: overhead {100 * record['overhead']:.1f}%")
    print(f"wrote {append_record('step_guard_cost.json', record)}")


if __name__ == "__main__":
    main()
