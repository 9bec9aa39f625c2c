import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"

# Two cores: keep intra-op threads predictable and tests quiet.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
