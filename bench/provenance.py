"""What a benchmark result was measured on: the commit (with a dirty flag), the load average.

    from bench.provenance import git_commit, load_average
    {"commit": git_commit(["train", "model"]), "load_average": load_average()}
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import List, Sequence

ROOT = Path(__file__).resolve().parent.parent


def git_commit(paths: Sequence[str] = ()) -> str:
    """HEAD's commit, with "-dirty" when tracked files (under `paths`, or anywhere) differ from it."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *paths], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return head + ("-dirty" if dirty else "")


def load_average() -> List[float]:
    """1, 5 and 15 minute load averages: other work on the machine while a benchmark ran."""
    return [round(x, 2) for x in os.getloadavg()]
