"""ops/rollout.py against a real TorchServe under SDK load: 2.0 parked at 0 workers, brought in,
made the default, 1.0 retired; no call may fail. Then the rollback, the same script reversed.

    .venv/bin/python -m pytest -q tests/reliability/test_rollout.py

bench/reliability.py runs the same under heavier load (bench/results/reliability.json).
"""
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import MODEL_YAML, grpc_ports
from seqrec_sdk import Client, SeqrecError
from devtools.ts_probes import worker_pids

pytestmark = pytest.mark.torchserve

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_versions(served, tmp_path_factory):
    from devtools.local_server import LocalTorchServe, archive

    work = tmp_path_factory.mktemp("rollout")
    (work / "model.yaml").write_text(MODEL_YAML)
    archive(served.export, work / "store", work / "model.yaml", version="2.0")
    archive(served.export, work / "store", work / "model.yaml")  # 1.0, the default
    with LocalTorchServe(work / "store", ["seqrec=seqrec_1.0.mar", "seqrec=seqrec_2.0.mar"], workdir=work / "server",
                         env={"SEQREC_THREADS": "1"}, settings=grpc_ports()) as ts:
        ts.wait_ready(["/predictions/seqrec/1.0", "/predictions/seqrec/2.0"])
        yield ts


def rollout(ts, *args):
    return subprocess.run([sys.executable, str(ROOT / "ops" / "rollout.py"), "--management", ts.management_url,
                           "--inference", ts.base_url, "--key-file", str(ts.key_file), "--workers", "1", *args],
                          capture_output=True, text=True, timeout=300)


def under_load(ts, action, threads: int = 4):
    """Run action() while `threads` SDK clients call the default version; -> (action's result,
    Counter of answering versions, failures)."""
    stop = threading.Event()
    versions, failures = Counter(), []
    lock = threading.Lock()

    def call():
        # A generous read timeout: on a CPU shared with the rest of the suite a slow answer is
        # not a rollout failure; an error, a refused connection or a 5xx still is.
        with Client(ts.base_url, token_file=str(ts.key_file), fallback=[1], timeout=(2.0, 15.0)) as client:
            while not stop.is_set():
                try:
                    r = client.recommend([1000, 1003], k=3)
                    with lock:
                        if r.fallback:
                            failures.append(r.fallback_reason)
                        else:
                            versions[r.model_version] += 1
                except SeqrecError as e:
                    with lock:
                        failures.append(repr(e))
                time.sleep(0.01)

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for w in workers:
        w.start()
    time.sleep(1.0)
    try:
        result = action()
        time.sleep(1.0)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    return result, versions, failures


def test_rollout_and_rollback_without_a_failed_call(two_versions):
    ts = two_versions
    park = rollout(ts, "--park", "2.0")
    assert park.returncode == 0, park.stderr
    assert {v: len(p) for v, p in worker_pids(ts).items()} == {"1.0": 1, "2.0": 0}

    done, versions, failures = under_load(ts, lambda: rollout(ts, "--to", "2.0", "--from", "1.0", "--drain", "1"))
    assert done.returncode == 0, done.stderr
    assert not failures, failures
    assert versions["1.0"] and versions["2.0"], versions
    assert {v: len(p) for v, p in worker_pids(ts).items()} == {"1.0": 0, "2.0": 1}
    assert ts.post(body={"history": []}).json()["model_version"] == "2.0"

    back, versions, failures = under_load(ts, lambda: rollout(ts, "--to", "1.0", "--from", "2.0", "--drain", "1"))
    assert back.returncode == 0 and not failures, (back.stderr, failures)
    assert ts.post(body={"history": []}).json()["model_version"] == "1.0"


def test_rollout_refuses_an_unregistered_version(two_versions):
    r = rollout(two_versions, "--to", "3.0", "--from", "1.0")
    assert r.returncode == 1 and "not registered" in r.stderr
    assert two_versions.post(body={"history": []}).status_code == 200
