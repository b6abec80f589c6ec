"""A worker killed with requests in flight, against a real TorchServe: the SDK retries TorchServe's
"Worker died." answer and no call fails.

    .venv/bin/python -m pytest -q tests/sdk/test_torchserve_worker_death.py     # ~13 s on 2 cores

Not a race against the kill: one of the two workers is stopped (SIGSTOP) before the calls start,
so the batch its frontend thread takes waits in that worker's socket; once those calls are seen
pending (the other worker answers the rest in milliseconds), the stopped worker is SIGKILLed.
TorchServe 0.12 then answers that batch 507 {"type": "InternalServerException", "message":
"Worker died."} (500 when the exit code is not 137), and the SDK sends those calls again.
"""
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from seqrec_sdk import Client, SeqrecError
from torchserve_fixtures import requires_java, tiny_export

from devtools.local_server import LocalTorchServe, archive, free_ports

from devtools.ts_probes import ready_workers, worker_pids

pytestmark = [pytest.mark.torchserve, requires_java]

MODEL_YAML = "minWorkers: 2\nmaxWorkers: 2\nbatchSize: 4\nmaxBatchDelay: 5\nresponseTimeout: 60\n"
CALLS = 8


@pytest.fixture(scope="module")
def torchserve(tmp_path_factory):
    work = tmp_path_factory.mktemp("sdk_worker_death")
    export = tiny_export(work / "export")
    (work / "model.yaml").write_text(MODEL_YAML)
    archive(export, work / "model_store", work / "model.yaml")
    grpc = free_ports(2)  # TorchServe's gRPC ports: off the defaults, so another server can run
    settings = {"grpc_inference_port": str(grpc[0]), "grpc_management_port": str(grpc[1])}
    with LocalTorchServe(work / "model_store", ["seqrec=seqrec.mar"], workdir=work / "server",
                         settings=settings) as srv:
        srv.wait_ready(["/predictions/seqrec"])  # one worker answers: the other may still load
        _wait_both_ready(srv)
        yield srv


def _wait_both_ready(srv, exclude: int = -1, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (ready_workers(srv).get("1.0") == 2 and exclude not in worker_pids(srv)["1.0"]):
        assert time.monotonic() < deadline, f"not 2 READY workers after {timeout:.0f} s"
        time.sleep(0.25)


def _wave(client, outcomes: list, lock, settle_s: float = 10.0):
    """CALLS concurrent recommend() calls; returns (threads, how many are still pending once
    nothing has completed for 0.5 s): those are held by the stopped worker."""
    def call(i: int) -> None:
        try:
            recs = client.recommend([1 + i, 2 + i, 3 + i], k=5)
            out = ("ok", recs.model_version, len(recs.items))
        except SeqrecError as e:  # recorded, asserted on below
            out = ("error", type(e).__name__, str(e))
        with lock:
            outcomes.append(out)

    with lock:
        before = len(outcomes)
    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(CALLS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + settle_s
    done, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        with lock:
            n = len(outcomes) - before
        if n != done:
            done, since = n, time.monotonic()
        elif time.monotonic() - since >= 0.5:
            break
        time.sleep(0.05)
    return threads, CALLS - done


def test_killed_worker_costs_no_call(torchserve):
    victim = worker_pids(torchserve)["1.0"][0]
    # A 30 s read timeout: the held calls wait for the kill, not for the client's patience.
    client = Client(torchserve.base_url, token_file=str(torchserve.key_file), retries=2,
                    timeout=(1.0, 30.0))
    outcomes: list = []
    lock = threading.Lock()
    threads: list = []
    held = 0
    os.kill(victim, signal.SIGSTOP)
    try:
        # The frontend's two worker threads take turns at the queue: the stopped worker's takes a
        # batch in the first wave in practice; more waves only in case it did not.
        for _ in range(5):
            wave, held = _wave(client, outcomes, lock)
            threads += wave
            if held:
                break
        assert held > 0, ("the stopped worker took no batch: nothing in flight to kill", outcomes)
        os.kill(victim, signal.SIGKILL)
        for t in threads:
            t.join(60)
    finally:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
        client.close()
    errors = [o for o in outcomes if o[0] != "ok"]
    assert not errors and len(outcomes) == len(threads), errors
    assert all(o == ("ok", "1.0", 5) for o in outcomes), outcomes
    stats = client.stats
    # The held calls got "Worker died." and were sent again (retries >= 1, not == held: on a busy
    # box a call still queued for the live worker may be counted as held).
    assert stats.retries >= 1 and stats.errors == 0 and stats.fallbacks == 0, (held, stats)
    _wait_both_ready(torchserve, exclude=victim)  # and TorchServe restarted the worker
