"""Tasks: what differs between classification and object detection (models, per-sample
scores, loss and distillation, metric, collate). ``classification`` and ``detection`` hold
one task each."""
