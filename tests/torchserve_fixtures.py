"""Helpers for the suites that start a real TorchServe (tests/handler, tests/sdk, reliability):
a tiny trained export and one server with two versions of it.

A uniquely named module, not a conftest: importable from any test folder (tests/ is on sys.path
through tests/conftest.py). The server itself is devtools/local_server.py.
"""
import atexit
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Sequence, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
from devtools.local_server import LocalTorchServe, archive

requires_java = pytest.mark.skipif(
    shutil.which("java") is None,
    reason="java not on PATH: TorchServe's frontend needs Java 17 (`make test` installs openjdk-17-jre-headless)")


_TRAINED: Dict[Tuple, Path] = {}  # one training per distinct export in a pytest run; each caller gets a copy


def tiny_export(out: Path, version: str = "1.0", users: int = 300, items: int = 200,
                overrides: Sequence[str] = ()) -> Path:
    """The training CLI on a small synthetic marketplace, one epoch: a real export, in seconds.
    `overrides`: more `--set key=value`, e.g. model.use_time=true. The same arguments a second time
    in a run copy the first export (training is seeded: it would be the same files)."""
    key = (version, users, items, tuple(overrides))
    if key in _TRAINED and _TRAINED[key].is_dir():
        shutil.copytree(_TRAINED[key], out)
        return out
    cmd = [sys.executable, "-m", "train", "--data", "synthetic", "--out", str(out), "--epochs", "1",
           "--version", version, "--set", f"synthetic_users={users}", f"synthetic_items={items}", *overrides]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"training failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    keep = tempfile.mkdtemp(prefix="seqrec-tiny-export-")
    atexit.register(shutil.rmtree, keep, True)
    _TRAINED[key] = Path(keep) / "export"
    shutil.copytree(out, _TRAINED[key])  # a pristine copy: a test may change its own export
    return out


@contextmanager
def two_version_server(work: Path, model_yaml: str, users: int = 300, items: int = 200,
                       overrides: Sequence[str] = ()) -> Iterator[Tuple[LocalTorchServe, Path]]:
    """(server, export): one tiny export archived as 1.0 (the default) and as 2.0 — same weights,
    another version label, enough to tell arms apart — served side by side, ready on both.
    `overrides`: training --set values (e.g. index=hnsw)."""
    export = tiny_export(work / "export", "1.0", users, items, overrides)
    (work / "model.yaml").write_text(model_yaml)
    store = work / "model_store"
    archive(export, store, work / "model.yaml", version="2.0")
    archive(export, store, work / "model.yaml")  # last: the symlink seqrec.mar -> seqrec_1.0.mar
    # The stable name (a symlink) for the default version, the versioned file beside it.
    with LocalTorchServe(store, ["seqrec=seqrec.mar", "seqrec=seqrec_2.0.mar"], workdir=work / "server") as srv:
        srv.wait_ready(["/predictions/seqrec", "/predictions/seqrec/2.0"])
        yield srv, export
