"""Client behaviour against a real HTTP server on 127.0.0.1: the request body, experiments and
exposures, fallbacks, tokens, recommend_many, ready(), versions(), thread safety."""

import datetime as dt
import json
import logging
import threading
import time

import pytest
import requests

from seqrec_sdk import (
    AuthError,
    BadRequest,
    Client,
    Event,
    Experiment,
    ModelNotFound,
    RecommendRequest,
    ScoredItem,
    Variant,
)
from seqrec_sdk.testing import FakeSeqrecServer, Reply

AB = Experiment("ranker-ab", [Variant("control", "1.0", 0.5), Variant("treatment", "2.0", 0.5)],
                coverage=0.6)


def last_body(server):
    return [r for r in server.requests if r.path.startswith("/predictions")][-1].body


def write_key_file(path, inference, management="mgmt-key"):
    # TorchServe's key_file.json layout (frontend TokenAuthorization.generateKeyFile)
    path.write_text(json.dumps({
        "management": {"key": management, "expiration time": "2030-01-01T00:00:00Z"},
        "inference": {"key": inference, "expiration time": "2030-01-01T00:00:00Z"},
        "API": {"key": "api-key"},
    }))
    return str(path)


# -- the request and the answer ------------------------------------------------------------------
def test_recommend_sends_contract_body_and_parses_answer(server):
    with Client(server.url) as client:
        recs = client.recommend([3, "7", 9], k=4, exclude=[10], candidates=list(range(1, 30)),
                                user_id="u1", now=1_700_000_000)
    assert last_body(server) == {"history": [3, "7", 9], "k": 4, "exclude_seen": True,
                                 "exclude": [10], "candidates": list(range(1, 30)),
                                 "user_id": "u1", "now": 1_700_000_000}
    assert len(recs.items) == 4 and all(isinstance(i, ScoredItem) for i in recs.items)
    assert not {3, 7, 9, 10} & set(recs.item_ids)
    assert recs.model == "seqrec" and recs.model_version == "1.0"
    assert recs.variant is None and recs.fallback is False and recs.fallback_reason is None
    assert len(recs.recommendation_id) == 32 and recs.latency_ms > 0
    assert [i.score for i in recs.items] == sorted((i.score for i in recs.items), reverse=True)


def test_optional_fields_are_omitted_and_events_serialised(server):
    when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    with Client(server.url) as client:
        client.recommend([1, 2])
        assert last_body(server) == {"history": [1, 2], "k": 10, "exclude_seen": True}
        client.recommend([Event(5, timestamp=when, event_type="view", source="search", strength=4.5), 6],
                         exclude_seen=False, now=dt.datetime(2024, 1, 3))
    body = last_body(server)
    assert body["history"] == [{"item_id": 5, "timestamp": when.timestamp(), "event_type": "view",
                                "source": "search", "strength": 4.5}, {"item_id": 6}]
    assert body["exclude_seen"] is False and body["now"] == 1704240000.0  # naive = UTC


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "5", True, 10 ** 400])
def test_event_strength_must_be_a_finite_number(bad):
    with pytest.raises(ValueError, match="Event.strength must be a finite number"):
        Event(1, strength=bad)


def test_server_popular_flag_unknown_items_and_extra_keys(server):
    server.script(Reply(200, {"items": [{"item_id": "x", "score": 1.5, "extra": 1}], "model": "seqrec",
                              "model_version": "7", "unknown_items": [999], "fallback": "popular",
                              "recommendation_id": "srv-id", "debug": {"any": "thing"}}))
    with Client(server.url) as client:
        recs = client.recommend([999])
    assert recs.item_ids == ("x",) and recs.unknown_items == (999,)
    assert recs.server_fallback == "popular" and recs.fallback is False
    assert recs.recommendation_id == "srv-id" and recs.model_version == "7"


def test_recommendation_ids_are_unique(server):
    with Client(server.url) as client:
        ids = {client.recommend([1]).recommendation_id for _ in range(50)}
    assert len(ids) == 50


@pytest.mark.parametrize("history, k, exc", [("123", 10, TypeError), ([1], 0, ValueError),
                                             ([1], True, ValueError)])
def test_programmer_errors_fail_before_any_request(server, history, k, exc):
    with Client(server.url) as client, pytest.raises(exc):
        client.recommend(history, k=k)
    assert server.requests == []


# -- experiments and exposures -------------------------------------------------------------------
def test_each_variant_lands_on_its_version_and_logs_one_exposure(server):
    exposures = []
    with Client(server.url, experiments=[AB], on_exposure=exposures.append) as client:
        results = {f"user-{i}": client.recommend([1, 2], k=3, user_id=f"user-{i}") for i in range(300)}
        recorded = [r for r in server.requests if r.path.startswith("/predictions")]
    seen_variants = set()
    for (uid, recs), req in zip(results.items(), recorded):
        variant = AB.assign(uid)
        if variant is None:
            assert req.path == "/predictions/seqrec" and recs.variant is None
        else:
            seen_variants.add(variant.name)
            assert req.path == f"/predictions/seqrec/{variant.model_version}"
            assert recs.model_version == variant.model_version and recs.variant == variant.name
            assert recs.experiment == "ranker-ab"
    assert seen_variants == {"control", "treatment"}
    in_exp = {uid: r for uid, r in results.items() if r.variant is not None}
    assert 0.5 < len(in_exp) / 300 < 0.7  # coverage 0.6
    assert len(exposures) == len(in_exp)  # once per served recommendation, only users in it
    for e in exposures:
        recs = in_exp[e.user_id]
        assert (e.experiment_key, e.variant, e.model_version, e.recommendation_id, e.item_ids) == \
            ("ranker-ab", recs.variant, recs.model_version, recs.recommendation_id, recs.item_ids)
        assert e.fallback is False


def test_no_exposure_without_user_or_with_pinned_version(server):
    exposures = []
    uid = next(f"u{i}" for i in range(100) if AB.assign(f"u{i}") is not None)
    with Client(server.url, experiments=[AB], on_exposure=exposures.append) as client:
        client.recommend([1])
        pinned = client.recommend([1], user_id=uid, version="2.0")
    assert exposures == [] and pinned.variant is None and pinned.model_version == "2.0"


def test_exposure_default_is_a_json_log_line(server, caplog):
    uid = next(f"u{i}" for i in range(100) if AB.assign(f"u{i}") is not None)
    with caplog.at_level(logging.INFO, logger="seqrec_sdk.exposure"):
        with Client(server.url, experiments=[AB]) as client:
            recs = client.recommend([1, 2], user_id=uid)
    [record] = [r for r in caplog.records if r.name == "seqrec_sdk.exposure"]
    logged = json.loads(record.getMessage().split(" ", 1)[1])
    assert logged["recommendation_id"] == recs.recommendation_id
    assert logged["variant"] == recs.variant and logged["item_ids"] == list(recs.item_ids)


def test_failing_exposure_callback_never_breaks_the_answer(server, caplog):
    def broken(_):
        raise RuntimeError("kafka down")
    uid = next(f"u{i}" for i in range(100) if AB.assign(f"u{i}") is not None)
    with Client(server.url, experiments=[AB], on_exposure=broken) as client:
        recs = client.recommend([1], user_id=uid)
        assert client.stats.exposure_errors == 1 and client.stats.exposures == 0
    assert recs.items and "on_exposure failed" in caplog.text


def test_first_experiment_that_takes_the_user_wins_and_namespaces_split(server):
    left = Experiment("left", [Variant("a", "1.0"), Variant("b", "2.0")], namespace=("ns", 0, 0.5))
    right = Experiment("right", [Variant("c", "1.0"), Variant("d", "2.0")], namespace=("ns", 0.5, 1))
    with Client(server.url, experiments=[left, right]) as client:
        keys = [client.assignment(f"u{i}")[0].key for i in range(400)]
    assert 150 < keys.count("left") < 250 and keys.count("left") + keys.count("right") == 400
    with pytest.raises(ValueError, match="unique"):
        Client(server.url, experiments=[left, left])


# -- fallback ------------------------------------------------------------------------------------
def test_fallback_when_server_is_down(dead_url, caplog, sleeps):
    exposures = []
    popular = [1, 2, 3, 4, 5, 6, 7, 8]
    uid = next(f"u{i}" for i in range(100) if AB.assign(f"u{i}") is not None)
    with Client(dead_url, retries=1, fallback=popular, experiments=[AB],
                on_exposure=exposures.append) as client:
        recs = client.recommend([2, 3], k=4, exclude=[5], user_id=uid)
        assert client.stats.fallbacks == 1
        assert dict(client.stats.fallback_reasons) == {"connection_failed": 1}
    assert recs.fallback is True and recs.fallback_reason == "connection_failed"
    assert recs.item_ids == (1, 4, 6, 7)  # seen and excluded removed, k honoured
    assert recs.variant == AB.assign(uid).name and len(sleeps) == 1  # retried first
    assert "fallback" in caplog.text and any(r.levelno == logging.WARNING for r in caplog.records)
    assert len(exposures) == 1 and exposures[0].fallback is True
    # the arm the user was assigned, even though its server did not answer
    assert exposures[0].model_version == recs.model_version == AB.assign(uid).model_version


@pytest.mark.parametrize("reply, reason", [
    (Reply(503), "overloaded"), (Reply(500), "server_error"), (Reply(504), "timeout"),
    (Reply(delay=0.4), "timeout"),
])
def test_fallback_reasons(server, reply, reason):
    server.script(*[reply] * 3)
    with Client(server.url, retries=2, timeout=(1.0, 0.1), fallback=[42, 43]) as client:
        recs = client.recommend([1])
    assert recs.fallback and recs.fallback_reason == reason and recs.item_ids == (42, 43)


def test_callable_fallback_gets_the_request_and_is_filtered(dead_url):
    seen = []
    def fallback(request):
        seen.append(request)
        return [ScoredItem(9, 0.9), 1, ScoredItem("8", 0.8), 7]
    with Client(dead_url, retries=0, fallback=fallback) as client:
        recs = client.recommend([1], k=2, candidates=["8", 9])
    assert isinstance(seen[0], RecommendRequest) and seen[0].candidates == ["8", 9]
    assert recs.items == (ScoredItem(9, 0.9), ScoredItem("8", 0.8))


def test_fallback_list_is_deduplicated_across_id_types(dead_url):
    with Client(dead_url, retries=0, fallback=[1, 1, "1", 2, "3", 3]) as client:
        assert client.recommend([], k=10).item_ids == (1, 2, "3")


def test_no_fallback_for_our_own_mistakes(server):
    server.script(Reply(400, {"code": 400, "type": "BadRequest", "message": "bad"}))
    with Client(server.url, fallback=[1, 2]) as client:
        with pytest.raises(BadRequest):
            client.recommend([1])
        with pytest.raises(ModelNotFound):
            client.recommend([1], version="0.0")
        assert client.stats.fallbacks == 0 and client.stats.errors == 2


def test_failing_fallback_raises_the_original_error(dead_url, caplog):
    def broken(_):
        raise KeyError("cache miss")
    with Client(dead_url, retries=0, fallback=broken) as client:
        with pytest.raises(Exception) as info:
            client.recommend([1])
    assert type(info.value).__name__ == "ConnectionFailed" and "fallback failed" in caplog.text


# -- tokens --------------------------------------------------------------------------------------
def test_rotated_key_is_reread_once_and_recovered(tmp_path):
    key_file = write_key_file(tmp_path / "key_file.json", "old-key")
    with FakeSeqrecServer(token="old-key") as server, Client(server.url, token_file=key_file) as client:
        client.recommend([1])
        server.token = "new-key"  # TorchServe rotated the inference key ...
        write_key_file(tmp_path / "key_file.json", "new-key")  # ... and rewrote key_file.json
        recs = client.recommend([1])
        auths = [r.headers["authorization"] for r in server.requests]
        assert client.stats.token_reloads == 1
    assert recs.items and auths == ["Bearer old-key", "Bearer old-key", "Bearer new-key"]


def test_refused_key_that_did_not_change_raises_auth_error(tmp_path):
    key_file = write_key_file(tmp_path / "key_file.json", "stale")
    with FakeSeqrecServer(token="fresh") as server, Client(server.url, token_file=key_file) as client:
        with pytest.raises(AuthError) as info:
            client.recommend([1])
        assert len(server.requests) == 1 and info.value.status == 400
        assert info.value.error_type == "InvalidKeyException"


def test_explicit_wrong_token_raises_without_rereading():
    with FakeSeqrecServer(token="right") as server, Client(server.url, token="wrong", fallback=[1]) as c:
        with pytest.raises(AuthError):
            c.recommend([1])  # never hidden behind a fallback
        assert len(server.requests) == 1


def test_token_from_environment(monkeypatch, tmp_path):
    with FakeSeqrecServer(token="env-key") as server:
        monkeypatch.setenv("SEQREC_TOKEN", "env-key")
        with Client(server.url) as client:
            assert client.recommend([1]).items
        monkeypatch.delenv("SEQREC_TOKEN")
        monkeypatch.setenv("SEQREC_TOKEN_FILE", write_key_file(tmp_path / "k.json", "env-key"))
        with Client(server.url) as client:
            assert client.recommend([1]).items


def test_bad_token_configuration_fails_at_construction(tmp_path):
    with pytest.raises(AuthError, match="cannot read"):
        Client("http://127.0.0.1:1", token_file=str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text('{"API": {"key": "x"}}')
    with pytest.raises(AuthError, match="inference"):
        Client("http://127.0.0.1:1", token_file=str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="not both"):
        Client("http://127.0.0.1:1", token="a", token_file="b")


# -- ready, versions -----------------------------------------------------------------------------
def test_ready_posts_a_real_prediction_to_every_version_in_use(server):
    with Client(server.url, experiments=[AB]) as client:
        assert client.ready() is True
    posted = [(r.path, r.body) for r in server.requests]
    assert posted == [("/predictions/seqrec", {"history": [], "k": 1}),
                      ("/predictions/seqrec/1.0", {"history": [], "k": 1}),
                      ("/predictions/seqrec/2.0", {"history": [], "k": 1})]


def test_ready_false_when_a_version_is_missing_or_server_down(server, dead_url, caplog):
    missing = Experiment("x", [Variant("a", "1.0"), Variant("b", "3.0")])
    with Client(server.url, experiments=[missing]) as client:
        assert client.ready() is False
    assert "3.0 does not exist" in caplog.text
    with Client(dead_url) as client:
        assert client.ready() is False
    server.script(Reply(503))
    with Client(server.url) as client:
        assert client.ready() is False  # workers still loading: no retry inside ready()


def test_versions_from_management_api(tmp_path):
    key_file = write_key_file(tmp_path / "key_file.json", "inf", management="mgmt")
    with FakeSeqrecServer(versions=("1.0", "2.0"), token="inf", management_token="mgmt") as server:
        with Client(server.url, token_file=key_file, management_url=server.url) as client:
            versions = client.versions()
        assert server.requests[-1].path == "/models/seqrec/all"
        assert server.requests[-1].headers["authorization"] == "Bearer mgmt"
    assert [v.version for v in versions] == ["1.0", "2.0"]
    assert all(v.ready and v.workers == 2 for v in versions)
    with Client("http://127.0.0.1:1") as client, pytest.raises(ValueError, match="management_url"):
        client.versions()


# -- recommend_many, threads, session ------------------------------------------------------------
class SlowFirstServer(FakeSeqrecServer):
    """Answers earlier requests later, so that completion order differs from request order."""

    def answer(self, method, path, headers, raw):
        body = json.loads(raw or b"null")
        if isinstance(body, dict) and body.get("candidates"):
            time.sleep(0.02 * (5 - body["candidates"][0] % 5))
        return super().answer(method, path, headers, raw)


def test_recommend_many_answers_in_order():
    with SlowFirstServer(catalogue=range(1, 50)) as server, Client(server.url) as client:
        reqs = [RecommendRequest([1], k=1, candidates=[i]) for i in range(2, 22)]
        reqs.append({"history": [1], "k": 1, "candidates": [40]})  # dicts work too
        results = client.recommend_many(reqs, max_workers=8)
    assert [r.item_ids for r in results] == [(i,) for i in range(2, 22)] + [(40,)]


def test_recommend_many_errors_raise_or_stand_in_place(server):
    reqs = [RecommendRequest([1], k=2), RecommendRequest([1], version="0.0"), RecommendRequest([2])]
    with Client(server.url) as client:
        with pytest.raises(ModelNotFound):
            client.recommend_many(reqs)
        out = client.recommend_many(reqs, return_exceptions=True)
        assert client.recommend_many([]) == []
    assert isinstance(out[1], ModelNotFound) and out[0].items and out[2].items


def test_thread_safety_smoke(server):
    exposures, lock = [], threading.Lock()
    def on_exposure(e):
        with lock:
            exposures.append(e)
    errors = []
    with Client(server.url, experiments=[AB], on_exposure=on_exposure, pool_size=8) as client:
        def worker(t):
            try:
                for i in range(40):
                    uid = f"t{t}-u{i}"
                    recs = client.recommend([t + 1, i + 1], k=3, user_id=uid)
                    variant = AB.assign(uid)
                    assert recs.variant == (variant.name if variant else None)
                    assert recs.model_version == (variant.model_version if variant else "1.0")
            except Exception as e:  # surfaced below: a thread's assert is otherwise lost
                errors.append(e)
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        stats = client.stats
    assert errors == []
    assert stats.requests == stats.ok == 320 and stats.errors == 0
    assert stats.exposures == len(exposures) == sum(AB.assign(f"t{t}-u{i}") is not None
                                                    for t in range(8) for i in range(40))
    assert len({e.recommendation_id for e in exposures}) == len(exposures)


def test_injected_session_is_used_and_left_open(server):
    session = requests.Session()
    session.headers["X-Caller"] = "feed-builder"
    with Client(server.url, session=session) as client:
        client.recommend([1])
    assert server.requests[0].headers["x-caller"] == "feed-builder"
    assert session.get(f"{server.url}/ping").json() == {"status": "Healthy"}  # not closed
    session.close()
