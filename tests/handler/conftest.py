"""Fixtures for handler tests; the helpers live in handler_fixtures.py."""
from pathlib import Path

import pytest
import torch
from handler_fixtures import load_handler, make_export


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("export_int"))


@pytest.fixture(scope="session")
def str_export_dir(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("export_str"), str_ids=True)


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    """initialize() sets torch's process-wide thread count, as a worker should; give the rest of
    the test session its own setting back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def loaded(export_dir):
    return load_handler(export_dir)


@pytest.fixture(scope="module")
def loaded_str(str_export_dir):
    return load_handler(str_export_dir)
