"""``python -m coreset_curate`` (also what ``torchrun -m coreset_curate`` runs)."""

import sys

from .cli import main

sys.exit(main())
