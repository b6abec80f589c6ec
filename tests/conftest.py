import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    return Path(os.environ.get("SEQREC_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data():
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"real datasets not found at {d}; set SEQREC_DATA to the shared/data folder")
    return d
