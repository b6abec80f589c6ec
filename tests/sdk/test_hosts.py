"""Several serving hosts behind one Client: spread, failover, cooldown and probe, per-host stats.

    .venv/bin/python -m pytest -q tests/sdk/test_hosts.py

Real HTTP servers on 127.0.0.1 (seqrec_sdk.testing.FakeSeqrecServer), stopped and restarted on
their port; no torch, no TorchServe (tests/sdk/test_hosts_torchserve.py does it for real). The
backoff sleeps are recorded, not slept (conftest.py); the cooldown clock is moved by hand where a
test needs it.
"""

import json
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import seqrec_sdk._hosts as hosts_module
from seqrec_sdk import (
    BadRequest,
    Client,
    ConnectionFailed,
    Cooldown,
    Experiment,
    HostStats,
    ModelNotFound,
    SeqrecError,
    ServerError,
    Variant,
)
from seqrec_sdk._hosts import Attempt, Host, HostPool
from seqrec_sdk._tokens import TokenSource
from seqrec_sdk.testing import FakeSeqrecServer, Reply

VERSIONS = ("1.0", "2.0")
WORKER_DIED = '{\n  "code": %d,\n  "type": "InternalServerException",\n  "message": "Worker died."\n}'


def predictions(server):
    return [r for r in server.requests if r.path.startswith("/predictions")]


@pytest.fixture
def servers():
    """start(port=0) -> a running fake server, stopped at the end (restarts included)."""
    started = []

    def start(port: int = 0, **kwargs) -> FakeSeqrecServer:
        srv = FakeSeqrecServer(versions=VERSIONS, port=port, **kwargs).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def pair(servers):
    return servers(), servers()


@pytest.fixture
def clock(monkeypatch):
    """The cooldown clock, moved by hand: ``clock.now += 1.0``."""
    class Clock:
        now = 1000.0

    monkeypatch.setattr(hosts_module, "_clock", lambda: Clock.now)
    return Clock


def dead_urls(n: int):
    """n loopback addresses where nothing listens (bound together, so all different)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    urls = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in socks]
    for s in socks:
        s.close()
    return urls


# -- routing over healthy hosts ----------------------------------------------------------------

def test_calls_go_round_robin_over_the_hosts(pair):
    a, b = pair
    with Client([a.url, b.url]) as client:
        answered = [client.recommend([1, 2], k=3).host for _ in range(10)]
        stats = client.stats
    assert answered == [a.url, b.url] * 5
    assert len(predictions(a)) == len(predictions(b)) == 5
    assert dict(stats.hosts) == {a.url: HostStats(requests=5, ok=5), b.url: HostStats(requests=5, ok=5)}
    assert stats.retries == stats.failovers == 0 and stats.ok == 10


def test_one_url_form_is_unchanged(server, sleeps):
    server.script(Reply(503), Reply(503))
    with Client(server.url + "/", retries=2) as client:
        assert client.base_url == server.url and client.base_urls == (server.url,)
        assert repr(client) == f"Client({server.url!r}, model='seqrec', experiments=0)"
        recs = client.recommend([1, 2, 3], k=3)
        stats = client.stats
    # the same host again after each backoff, as before there were several
    assert recs.host == server.url and len(recs.items) == 3 and len(sleeps) == 2
    assert stats.retries == 2 and stats.failovers == 0
    assert dict(stats.hosts) == {server.url: HostStats(requests=3, ok=1, failures=2, marked_down=1)}


# -- failover ----------------------------------------------------------------------------------

@pytest.mark.parametrize("status, body", [(503, None), (500, WORKER_DIED % 500), (507, WORKER_DIED % 507)])
def test_503_and_worker_died_fail_over_to_the_other_host(pair, sleeps, status, body):
    a, b = pair
    a.script(Reply(status, body))
    with Client([a.url, b.url], retries=2) as client:
        recs = client.recommend([1, 2], k=3)  # the first call goes to the first host
        stats = client.stats
    assert recs.host == b.url and not recs.fallback and len(recs.items) == 3
    assert len(predictions(a)) == len(predictions(b)) == 1
    assert predictions(a)[0].headers["x-request-id"] == predictions(b)[0].headers["x-request-id"]
    assert sleeps == []  # no backoff before a host this call has not tried
    assert stats.retries == stats.failovers == 1 and stats.errors == 0
    assert stats.hosts[a.url] == HostStats(requests=1, failures=1, marked_down=1, down=True)
    assert stats.hosts[b.url] == HostStats(requests=1, ok=1)


@pytest.mark.parametrize("call, script, error, failures", [
    (lambda c: c.recommend([1, 2], k=5000), None, BadRequest, 0),            # the server's 400
    (lambda c: c.recommend([1, 2], k=3, version="3.0"), None, ModelNotFound, 0),
    (lambda c: c.recommend([1, 2], k=3),                                     # the handler's own 500
     Reply(500, {"code": 500, "type": "InternalServerError", "message": "RuntimeError('boom')"}),
     ServerError, 1),
])
def test_request_errors_do_not_fail_over_or_mark_the_host(pair, sleeps, call, script, error, failures):
    a, b = pair
    if script:
        a.script(script)
    with Client([a.url, b.url], retries=2) as client:
        with pytest.raises(error):
            call(client)
        stats = client.stats
    assert len(predictions(a)) == 1 and predictions(b) == [] and sleeps == []
    assert stats.retries == stats.failovers == 0
    assert stats.hosts[a.url] == HostStats(requests=1, failures=failures)  # not marked down


class _Truncating(BaseHTTPRequestHandler):
    """Promises 100 bytes, sends 9 and hangs up: a server dying mid-answer."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(b'{"items":')
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_answer_cut_off_mid_body_fails_over(servers, sleeps):
    good = servers()
    broken = ThreadingHTTPServer(("127.0.0.1", 0), _Truncating)
    threading.Thread(target=broken.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{broken.server_address[1]}"
    try:
        with Client([url, good.url], retries=1) as client:
            recs = client.recommend([1, 2], k=3)
            stats = client.stats
    finally:
        broken.shutdown()
        broken.server_close()
    assert recs.host == good.url and stats.failovers == 1
    assert stats.hosts[url] == HostStats(requests=1, failures=1, marked_down=1, down=True)


def test_host_stopped_under_concurrent_load_costs_no_call(pair):
    a, b = pair
    threads, total, stop_after = 8, 400, 100
    outcomes, lock = [], threading.Lock()
    started = [0]
    # A cooldown longer than the test: once out, the stopped host stays out.
    client = Client([a.url, b.url], retries=2, fallback=[7, 8, 9], cooldown=Cooldown(60, 60))

    def work():
        while True:
            with lock:
                if started[0] == total:
                    return
                started[0] += 1
                n = started[0]
            try:
                recs = client.recommend([1 + n % 50, 2], k=3, user_id=f"u{n}")
                out = ("fallback" if recs.fallback else "ok", recs.host)
            except SeqrecError as e:  # recorded, asserted on below
                out = ("error", repr(e))
            with lock:
                outcomes.append(out)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 10
    while len(outcomes) < stop_after and time.monotonic() < deadline:
        time.sleep(0.002)
    a.stop()  # refuses new connections, cuts the open ones
    for w in workers:
        w.join(20)
    stats = client.stats
    client.close()
    assert len(outcomes) == total and [o for o in outcomes if o[0] != "ok"] == []
    assert stats.fallbacks == stats.errors == 0 and stats.ok == total
    assert {h for _, h in outcomes[:stop_after]} == {a.url, b.url}
    assert {h for _, h in outcomes[-100:]} == {b.url}  # long after the stop: all on b
    down = stats.hosts[a.url]
    # >= 1: an answer a was still sending when it stopped may put it back once
    assert down.down and down.marked_down >= 1 and down.failures >= 1, down
    # every failed attempt on a moved to b at once
    assert stats.failovers == stats.retries == down.failures


def test_restarted_host_gets_traffic_again_after_its_cooldown(servers, clock):
    a, b = servers(), servers()
    port = a.port
    client = Client([a.url, b.url], cooldown=Cooldown(base=1.0, max=4.0))
    a.stop()
    assert {client.recommend([1]).host for _ in range(4)} == {b.url}
    assert client.stats.hosts[a.url] == HostStats(requests=1, failures=1, marked_down=1, down=True)

    clock.now += 1.0  # cooldown over: one call probes a, still dead, and fails over
    assert client.recommend([1]).host == b.url
    assert client.stats.hosts[a.url] == HostStats(requests=2, failures=2, marked_down=2, down=True)
    clock.now += 1.0  # the failed probe doubled the cooldown to 2 s: a is not asked
    assert client.recommend([1]).host == b.url
    assert client.stats.hosts[a.url].requests == 2

    again = servers(port=port)
    clock.now += 1.0  # due again: the probe finds it back, and it takes its turns
    answered = [client.recommend([1]).host for _ in range(6)]
    stats = client.stats
    client.close()
    assert answered[0] == a.url and Counter(answered) == {a.url: 3, b.url: 3}
    assert len(predictions(again)) == 3
    assert stats.hosts[a.url] == HostStats(requests=5, ok=3, failures=2, marked_down=2, down=False)
    assert stats.fallbacks == stats.errors == 0


def test_restarted_host_with_a_new_key_stays_out_until_its_model_answers(servers, clock, tmp_path):
    """A restarted TorchServe opens its port with a new key before its workers have loaded: the
    probe's old key is refused (the frontend, not the model), the re-read key's request waits in
    its queue. The host stays out, and that call is answered by the other host."""
    a, b = servers(token="a1"), servers(token="b")
    files = {a.url: _key_file(tmp_path / "a.json", "a1"), b.url: _key_file(tmp_path / "b.json", "b")}
    client = Client([a.url, b.url], token_file=files, timeout=(1.0, 0.3), cooldown=Cooldown(base=1.0, max=4.0))
    port = a.port
    a.stop()
    assert {client.recommend([1]).host for _ in range(3)} == {b.url}
    again = servers(port=port, token="a2")
    _key_file(tmp_path / "a.json", "a2")
    refused = {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."}
    again.script(Reply(400, refused), Reply(200, delay=1.0))  # the old key; then workers loading
    clock.now += 1.0  # due: this call probes a
    recs = client.recommend([1])
    stats = client.stats
    assert recs.host == b.url and not recs.fallback
    assert stats.token_reloads == 1 and stats.hosts[a.url].down and stats.errors == stats.fallbacks == 0
    assert [r.headers["authorization"] for r in predictions(again)] == ["Bearer a1", "Bearer a2"]
    clock.now += 4.0  # loaded now: the next probe answers and a takes its turns again
    assert Counter(client.recommend([1]).host for _ in range(4)) == {a.url: 2, b.url: 2}
    assert not client.stats.hosts[a.url].down
    client.close()


def test_all_hosts_down_try_each_then_fall_back(sleeps, clock):
    d1, d2 = dead_urls(2)
    with Client([d1, d2], retries=2, fallback=[7, 8, 9]) as client:
        first = client.recommend([1], k=2)
        second = client.recommend([1], k=2)  # both out of rotation: tried anyway
        stats = client.stats
    for recs in (first, second):
        assert recs.fallback and recs.fallback_reason == "connection_failed"
        assert recs.item_ids == (7, 8) and recs.host is None
    # each call: one host, the other at once, then the first again after a backoff
    assert stats.hosts[d1].requests + stats.hosts[d2].requests == 6
    assert stats.failovers == 2 and stats.retries == 4 and len(sleeps) == 2
    assert stats.hosts[d1].marked_down == stats.hosts[d2].marked_down == 1
    with Client([d1, d2], retries=1) as client:  # no fallback: the error of the last attempt
        with pytest.raises(ConnectionFailed):
            client.recommend([1])


# -- keys and experiments ----------------------------------------------------------------------

def _key_file(path, key):
    path.write_text(json.dumps({"inference": {"key": key}, "management": {"key": "m-" + key}}))
    return str(path)


def test_one_key_file_per_host_each_re_read_on_its_own(servers, tmp_path):
    a, b = servers(token="key-a"), servers(token="key-b")
    files = {a.url: _key_file(tmp_path / "a.json", "key-a"), b.url: _key_file(tmp_path / "b.json", "key-b")}
    with Client([a.url, b.url], token_file=files) as client:
        assert {client.recommend([1]).host for _ in range(4)} == {a.url, b.url}
        a.token = "key-a2"  # a restarted or rotated: a new key in a's file only
        _key_file(tmp_path / "a.json", "key-a2")
        assert Counter(client.recommend([1]).host for _ in range(4)) == {a.url: 2, b.url: 2}
        stats = client.stats
    assert stats.token_reloads == 1 and stats.errors == 0 and stats.failovers == 0
    assert {r.headers["authorization"] for r in predictions(b)} == {"Bearer key-b"}
    with Client([a.url, b.url], token={a.url: "key-a2", b.url: "key-b"}) as client:  # keys as such
        assert Counter(client.recommend([1]).host for _ in range(4)) == {a.url: 2, b.url: 2}


def test_one_key_file_shared_by_all_hosts(servers, tmp_path):
    a, b = servers(token="shared"), servers(token="shared")
    with Client([a.url, b.url], token_file=_key_file(tmp_path / "k.json", "shared")) as client:
        assert Counter(client.recommend([1]).host for _ in range(4)) == {a.url: 2, b.url: 2}


def test_experiment_arms_do_not_depend_on_the_host(pair):
    a, b = pair
    exp = Experiment("hosts-ab", [Variant("control", "1.0", 0.5), Variant("treat", "2.0", 0.5)])
    exposures = []
    seen = defaultdict(set)  # user -> {(host, variant, version)}
    with Client([a.url, b.url], experiments=[exp], on_exposure=exposures.append) as client:
        for i in range(20):
            for _ in range(2):  # round-robin: a user's two calls land on both hosts
                recs = client.recommend([1, 2], k=3, user_id=f"user-{i}")
                seen[f"user-{i}"].add((recs.host, recs.variant, recs.model_version))
        a.stop()  # and with one host gone, the same arms from the other
        for i in range(20):
            recs = client.recommend([1, 2], k=3, user_id=f"user-{i}")
            seen[f"user-{i}"].add((recs.host, recs.variant, recs.model_version))
    for user, answers in seen.items():
        variant = exp.assign(user)
        assert {h for h, _, _ in answers} == {a.url, b.url}, (user, answers)
        assert {(v, m) for _, v, m in answers} == {(variant.name, variant.model_version)}, user
    assert len(exposures) == 60
    assert all(e.variant == exp.assign(e.user_id).name for e in exposures)
    for srv in (a, b):  # both hosts served both arms
        assert {r.path for r in predictions(srv)} == {"/predictions/seqrec/1.0", "/predictions/seqrec/2.0"}


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("base_url, message", [
    ([], "at least one base URL"),
    ("127.0.0.1:8080", "must be a string starting with http://"),
    (["http://127.0.0.1:1", "10.0.0.2:8080"], "got '10.0.0.2:8080'"),
    (["http://127.0.0.1:1", None], "got None"),
    (["http://127.0.0.1:1", "http://127.0.0.1:1/"], "given twice"),
])
def test_bad_base_urls_are_refused(base_url, message):
    with pytest.raises(ValueError, match=message):
        Client(base_url)


def test_per_host_keys_must_name_exactly_the_hosts(tmp_path):
    urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    key = _key_file(tmp_path / "k.json", "k")
    with pytest.raises(ValueError, match=r"missing \['http://127.0.0.1:2'\]"):
        Client(urls, token_file={urls[0]: key})
    with pytest.raises(ValueError, match=r"not a base URL \['http://127.0.0.1:3'\]"):
        Client(urls, token_file={urls[0]: key, urls[1]: key, "http://127.0.0.1:3": key})
    with pytest.raises(ValueError, match="cooldown"):
        Client(urls, cooldown=0)


# -- the pool's rules, on a clock moved by hand ------------------------------------------------

def _pool(n=2, base=1.0, max_=4.0):
    tokens = TokenSource(token="t")
    return HostPool([Host(f"http://h{i}", tokens) for i in range(n)], Cooldown(base, max_))


def test_pool_probes_a_recovered_host_with_one_request_at_a_time(clock):
    pool = _pool()
    h0, h1 = pool.hosts
    assert pool.report(h0, Attempt.DOWN) == "down"
    clock.now += 0.5
    assert {pool.pick() for _ in range(4)} == {h1}  # cooling down
    clock.now += 0.5
    assert pool.pick() is h0  # due: its probe comes before the healthy hosts
    assert {pool.pick() for _ in range(4)} == {h1}  # one probe at a time
    assert pool.report(h0, Attempt.OK) == "up"
    assert {pool.pick() for _ in range(4)} == {h0, h1}


def test_pool_cooldown_doubles_while_probes_fail_and_resets_on_an_answer(clock):
    pool = _pool(base=1.0, max_=4.0)
    h0 = pool.hosts[0]
    waits = []
    pool.report(h0, Attempt.DOWN)
    for _ in range(4):
        waits.append(h0.down_until - clock.now)
        clock.now = h0.down_until
        assert pool.pick() is h0
        pool.report(h0, Attempt.NO_ANSWER)  # a probe that times out fails too
    waits.append(h0.down_until - clock.now)
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]
    clock.now = h0.down_until
    assert pool.pick() is h0 and pool.report(h0, Attempt.REJECTED) == "up"  # it answered
    pool.report(h0, Attempt.DOWN)
    assert h0.down_until - clock.now == 1.0
    assert pool.snapshot()[h0.url] == HostStats(requests=7, failures=6, marked_down=6, down=True)


def test_pool_counts_one_mark_for_failures_already_out_and_keeps_slow_hosts(clock):
    pool = _pool()
    h0, h1 = pool.hosts
    for _ in range(5):  # the calls that were in flight when it went down
        pool.report(h0, Attempt.DOWN)
    assert pool.snapshot()[h0.url].marked_down == 1 and h0.down_until == clock.now + 1.0
    assert pool.report(h1, Attempt.NO_ANSWER) is None  # a read timeout alone: still in
    assert pool.pick(avoid={h1}) is h0  # never all excluded: a down host beats a tried one
    assert pool.pick(avoid={h0, h1}) is h1  # all tried: the one in rotation first
    pool.release(h0)
