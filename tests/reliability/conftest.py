"""Fixtures for the reliability suite: the handler helpers of tests/handler, and torch's thread
count given back after a handler's initialize() set it (as a TorchServe worker should)."""
import sys
from pathlib import Path

import pytest
import torch

HANDLER_TESTS = Path(__file__).resolve().parents[1] / "handler"
if str(HANDLER_TESTS) not in sys.path:
    sys.path.insert(0, str(HANDLER_TESTS))


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
