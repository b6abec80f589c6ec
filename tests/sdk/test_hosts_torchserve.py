"""One Client over two real TorchServes: one is killed under load and no call fails or falls
back; started again on its ports, it gets traffic again. Each user keeps one A/B arm whichever
host answers.

    .venv/bin/python -m pytest -q tests/sdk/test_hosts_torchserve.py

Each server serves the tiny trained export as 1.0 (the default) and 2.0, one worker each, from
its own directory: its own key_file.json, so the client gets one key file per host, and the
restarted server writes a new key that the client has to re-read. The kill is SIGKILL to the
server's whole process group (launcher, Java, workers), as a crashed machine would go.
tests/sdk/test_hosts.py checks the same rules in detail against fake servers; bench/reliability.py's
hosts phase runs this at the shipped settings (bench/reliability_fleet.py, whose Restartable this uses).
"""
import itertools
import threading
import time
from collections import defaultdict

import pytest
from seqrec_sdk import Client, Cooldown, Experiment, SeqrecError, Variant
from torchserve_fixtures import requires_java, tiny_export

from bench.reliability_fleet import Restartable
from devtools.local_server import archive, free_ports

pytestmark = [pytest.mark.torchserve, requires_java]

# One worker per version and server, one torch thread each: two servers share 2 cores.
MODEL_YAML = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 5\nresponseTimeout: 60\n"
MODELS = ["seqrec=seqrec.mar", "seqrec=seqrec_2.0.mar"]
PATHS = ["/predictions/seqrec", "/predictions/seqrec/2.0"]
AB = Experiment("hosts-ab", [Variant("control", "1.0", 0.5), Variant("candidate", "2.0", 0.5)])
USERS = 40


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One model store for both servers: the export as 2.0, and as 1.0 behind seqrec.mar."""
    work = tmp_path_factory.mktemp("sdk_hosts")
    export = tiny_export(work / "export")
    (work / "model.yaml").write_text(MODEL_YAML)
    archive(export, work / "model_store", work / "model.yaml", version="2.0")
    archive(export, work / "model_store", work / "model.yaml")  # last: seqrec.mar -> 1.0
    return work / "model_store"


@pytest.fixture
def servers(store, tmp_path):
    ports = free_ports(10)  # one call: ten different ports for the two servers
    pair = [Restartable(store, MODELS, tmp_path / name, ports[i * 5:i * 5 + 5]) for i, name in enumerate("ab")]
    try:
        for srv in pair:
            srv.start(PATHS)
        yield pair
    finally:
        for srv in pair:
            srv.stop()


class Load:
    """Threads calling recommend() for USERS users until stopped; every call recorded as
    (completed at, user, outcome, host, variant, model version)."""

    def __init__(self, client: Client, threads: int = 4) -> None:
        self.client = client
        self.records: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._n = itertools.count()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]

    def _work(self) -> None:
        while not self._stop.is_set():
            n = next(self._n)
            user = f"user-{n % USERS}"
            try:
                r = self.client.recommend([1 + n % 50, 2, 3], k=5, user_id=user)
                rec = (time.monotonic(), user, "fallback" if r.fallback else "ok", r.host,
                       r.variant, r.model_version)
            except SeqrecError as e:  # recorded, asserted on below
                rec = (time.monotonic(), user, "error", repr(e), None, None)
            with self._lock:
                self.records.append(rec)
            time.sleep(0.01)

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def until(self, done, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"{what} not within {timeout:.0f} s: {self.client.stats}"
            time.sleep(0.1)


def test_killed_host_costs_no_call_and_gets_traffic_once_back(servers):
    a, b = servers
    client = Client([a.url, b.url], token_file={a.url: a.key_file, b.url: b.key_file},
                    experiments=[AB], retries=2, fallback=[1, 2, 3],
                    # A generous read timeout: on 2 shared cores a slow answer is not a failover
                    # failure; a refused connection, a 5xx or a fallback still is.
                    timeout=(2.0, 15.0), cooldown=Cooldown(base=0.5, max=2.0))

    def hosts():
        return client.stats.hosts

    try:
        with Load(client) as load:
            load.until(lambda: min(h.ok for h in hosts().values()) >= 20, 60, "both hosts answering")
            killed = time.monotonic()
            a.kill()
            time.sleep(3.0)  # b alone
            restarted = time.monotonic()
            a.start(PATHS)  # same ports and directory, a new key
            ready, ok_at_ready = time.monotonic(), hosts()[a.url].ok
            # within its cooldown (at most 2 s) plus a call or two
            load.until(lambda: hosts()[a.url].ok >= ok_at_ready + 10, 30, "traffic back on a")
        stats = client.stats
    finally:
        client.close()

    records = load.records
    failed = [r for r in records if r[2] != "ok"]
    assert not failed, failed[:10]
    assert stats.fallbacks == stats.errors == 0 and stats.ok == len(records), stats
    assert stats.hosts[a.url].marked_down >= 1 and stats.failovers >= 1, stats
    assert stats.token_reloads >= 1, stats  # the restarted server's new key, re-read
    while_dead = {r[3] for r in records if killed + 0.5 < r[0] < restarted}
    assert while_dead == {b.url}, while_dead
    assert any(r[3] == a.url for r in records if r[0] > ready)
    # one arm per user, whichever host answered; both hosts served both arms
    arms, served = defaultdict(set), set()
    for _, user, _, host, variant, version in records:
        arms[user].add((variant, version))
        served.add((host, version))
    for user, seen in arms.items():
        expected = AB.assign(user)
        assert seen == {(expected.name, expected.model_version)}, (user, seen)
    assert served == {(h, v) for h in (a.url, b.url) for v in ("1.0", "2.0")}, served
