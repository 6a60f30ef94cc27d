import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("CORESET_CURATE_PROGRESS", "0")
torch.set_num_threads(min(2, torch.get_num_threads()))

CIFAR10_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    """Real CIFAR-10 (HF Parquet layout) next to the checkout, or skip the test."""
    env = os.environ.get("CORESET_CURATE_CIFAR10")
    path = Path(env) if env else CIFAR10_DIR
    if not (path / "test-00000-of-00001.parquet").is_file():
        reason = f"real CIFAR-10 not found at {path} (set CORESET_CURATE_CIFAR10)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI is expected to have it")
        pytest.skip(reason)
    return path
