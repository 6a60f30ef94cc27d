"""From a noisy dataset to a clean quantized model, in one resumable pipeline.

    cfg = load_curate_recipe("recipes/cifar10_resnet20_w4a4_curate.yaml")
    summary = curate(cfg, "curated/")          # or: coreset-curate curate --recipe R --out DIR

Stages, each in its own part of the output folder:

1. ``teacher/``: the full-precision teacher, trained on the labels as given (``teacher``
   recipe; a teacher that memorised its labels cannot audit them, so keep it short);
2. ``audit/``: two scoring rounds of the training split, the teacher's own and the
   calibrated quantized student's (DS against the teacher), both with the whole softmax,
   and the noise audit of them (``audit.parquet``, ``report.html``, ``summary.md``);
3. ``labels_clean.parquet``: the labels with the audit's flagged samples left out
   (``clean: exclude``) or given the suggested label (``clean: relabel``);
4. ``teacher_clean/``: the teacher trained again, the same way, on the cleaned labels
   (``retrain_teacher: false`` skips it and distils from the first one);
5. ``student/``: QAT (``student`` recipe: its method, fraction and R) on the cleaned labels,
   distilling from the cleaned teacher, the finished model scored once more;
6. ``final_audit/``: the audit of that last round: what noise is left.

``summary.json`` and ``report.html`` compare before and after: flags, labels left out or
changed, the share of wrong labels where the truth is known (injected noise, or a labels
table with ``true_label``), and top-1 of both teachers and the student.

A stage whose outputs exist and whose inputs (its settings and the files it reads, by
sha256) are those it was made from is skipped; one made from other inputs is refused,
with ``overwrite`` to make it and every later stage again. A killed training stage resumes
from its last checkpoint, and a killed pipeline started again ends where an uninterrupted
one would.
"""

from .config import STAGES, CurateConfig, load_curate_recipe
from .run import curate

__all__ = ["STAGES", "CurateConfig", "load_curate_recipe", "curate"]
