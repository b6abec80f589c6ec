import os
from pathlib import Path

import pytest
from lane_guard import LaneGuard

ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    return Path(os.environ.get("SEQREC_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data():
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"real datasets not found at {d}; set SEQREC_DATA to the shared/data folder")
    return d


# The fast lane (`make test-fast`) deselects `torchserve` and `training`; the guard fails a test
# that starts TorchServe or trains without its marker (see lane_guard.py).
_guard = LaneGuard()


def pytest_configure(config):
    _guard.install()


def pytest_unconfigure(config):
    _guard.uninstall()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _guard.watching(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _guard.watching(item):
        return (yield)
