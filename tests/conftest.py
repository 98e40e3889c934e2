import os

import pytest
import torch

# Tests share 2 cores with Ray workers and each other; oversubscribed OpenMP threads spin and
# slow a tiny UNet forward by two orders of magnitude, so every test process uses one thread.
torch.set_num_threads(1)

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A randomly initialised tiny pipeline saved with save_pretrained (stands in for any local SD folder)."""
    from fedlora.models.tiny import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny_base")
    build_tiny_pipeline(seed=1).save_pretrained(path)
    return str(path)
