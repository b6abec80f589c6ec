"""Experiments from a GrowthBook features payload: the mapping, the payloads refused, a client
routed by a source, and refreshes from a file and a URL that keep the last good definitions."""

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from seqrec_sdk import Client, ExperimentPayloadError, GrowthBookSource, StaticExperiments
from seqrec_sdk.experiments import Experiment
from seqrec_sdk.growthbook_source import parse_features
from seqrec_sdk.models import Variant

FEATURE = "seqrec-model"


def payload(rules, default="1.0"):
    return {"status": 200, "features": {
        FEATURE: {"defaultValue": default, "rules": rules},
        "other-flag": {"defaultValue": True, "rules": [{"condition": {"country": "FR"},
                                                        "force": False}]},
    }}


RULE = {"id": "fr1", "key": "ranker-test", "variations": ["1.0", "2.0"], "weights": [0.3, 0.7],
        "coverage": 0.4, "hashAttribute": "id", "seed": "seed-9", "hashVersion": 2,
        "namespace": ["rankers", 0, 0.6], "phase": "1", "name": "Ranker test",
        "meta": [{"key": "0", "name": "control"}, {"key": "1", "name": "sasrec"}]}


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


# -- the mapping ---------------------------------------------------------------------------------
def test_a_rule_becomes_an_experiment_with_growthbooks_fields():
    got = parse_features(payload([RULE]), FEATURE)
    assert got.default_version == "1.0"
    [exp] = got.experiments
    assert exp == Experiment("ranker-test", [Variant("control", "1.0", 0.3, key="0"),
                                             Variant("sasrec", "2.0", 0.7, key="1")],
                             coverage=0.4, seed="seed-9", namespace=("rankers", 0, 0.6),
                             hash_version=2)


def test_growthbook_defaults_key_seed_hash_version_and_meta():
    rule = {"variations": [{"model_version": "1.0"}, {"model_version": "2.0"}]}
    [exp] = parse_features(payload([rule], default=None), FEATURE).experiments
    # no key: the feature's; no seed: the key; no hashVersion: 1; no meta: "0", "1"
    assert (exp.key, exp.seed, exp.hash_version, exp.coverage) == (FEATURE, None, 1, 1.0)
    assert [(v.name, exp.variation_id(v), v.model_version) for v in exp.variants] == \
        [("0", "0", "1.0"), ("1", "1", "2.0")]
    assert parse_features(payload([rule], default=None), FEATURE).default_version is None


def test_rules_keep_their_order_and_a_rule_with_empty_targeting_is_fine():
    second = dict(RULE, key="second", namespace=["rankers", 0.6, 1.0], condition={}, filters=[])
    got = parse_features(payload([RULE, second]), FEATURE)
    assert [e.key for e in got.experiments] == ["ranker-test", "second"]
    assert got.versions() == ["1.0", "2.0"]


@pytest.mark.parametrize("change, message", [
    ({"condition": {"country": "FR"}}, "'condition' is set"),
    ({"parentConditions": [{"id": "f", "condition": {}}]}, "'parentConditions' is set"),
    ({"force": "2.0"}, "'force' is set"),
    ({"filters": [{"seed": "x", "ranges": [[0, 0.5]]}]}, "'filters' is set"),
    ({"ranges": [[0, 0.5], [0.5, 1]]}, "'ranges' is set"),
    ({"hashAttribute": "deviceId"}, "hashAttribute is 'deviceId'"),
    ({"weights": [0.5, 0.6]}, "sum to 1"),
    ({"weights": [1.0]}, "one number per variation"),
    ({"coverage": 1.5}, "coverage"),
    ({"hashVersion": 3}, "hash_version"),
    ({"variations": ["1.0", 2]}, "variation 1: a variation must be a model version string"),
    ({"variations": ["1.0"]}, "two or more"),
    ({"meta": [{"key": "0"}]}, "one entry per variation"),
    ({"meta": [{"key": "0", "passthrough": True}, {"key": "1"}]}, "passthrough"),
    ({"meta": [{"key": "a", "name": "x"}, {"key": "a", "name": "y"}]}, "keys must be unique"),
])
def test_rules_growthbook_would_read_differently_are_refused(change, message):
    with pytest.raises(ExperimentPayloadError, match=message) as info:
        parse_features(payload([dict(RULE, **change)]), FEATURE)
    assert "feature 'seqrec-model' rule 0" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad, message", [
    ([], "expected a JSON object"),
    ({"encryptedFeatures": "abc"}, "encrypted"),
    ({"features": {"x": {}}}, "not in the payload"),
    ({"features": {FEATURE: {"defaultValue": 3}}}, "defaultValue"),
    ({"features": {FEATURE: {"rules": {}}}}, "'rules' must be a list"),
    (payload([RULE, RULE]), "keys must be unique"),
])
def test_unusable_payloads_say_why(bad, message):
    with pytest.raises(ExperimentPayloadError, match=message):
        parse_features(bad, FEATURE)


# -- a client routed by a source -----------------------------------------------------------------
def test_client_follows_the_payloads_default_and_logs_variation_ids(server, tmp_path):
    path = tmp_path / "features.json"
    path.write_text(json.dumps(payload([dict(RULE, coverage=1.0, namespace=None)], default="2.0")))
    exposures = []
    source = GrowthBookSource(path=path, feature=FEATURE, refresh_s=None)
    with Client(server.url, experiments=source, on_exposure=exposures.append) as client:
        exp = client.experiments[0]
        users = [f"u{i}" for i in range(40)]
        for u in users:
            client.recommend([1, 2], k=3, user_id=u)
        client.recommend([1, 2], k=3)  # no user id: outside experiments, the default version
    paths = [r.path for r in server.requests if r.path.startswith("/predictions")]
    expected = [f"/predictions/seqrec/{exp.assign(u).model_version}" for u in users]
    assert paths == expected + ["/predictions/seqrec/2.0"]
    assert [(e.variation_id, e.variant) for e in exposures] == \
        [(exp.variation_id(exp.assign(u)), exp.assign(u).name) for u in users]
    assert {e.variation_id for e in exposures} == {"0", "1"}


def test_a_fixed_list_is_a_static_source_and_still_checks_keys():
    exp = Experiment("a", [Variant("x", "1"), Variant("y", "2")])
    assert StaticExperiments([exp]).current().experiments == (exp,)
    with pytest.raises(ValueError, match="unique"):
        Client("http://127.0.0.1:1", experiments=[exp, exp])


# -- refreshes -----------------------------------------------------------------------------------
def test_file_refresh_picks_up_changes_and_keeps_the_last_good(tmp_path, caplog):
    path = tmp_path / "features.json"
    path.write_text(json.dumps(payload([RULE])))
    with GrowthBookSource(path=path, feature=FEATURE, refresh_s=0.02) as source:
        first = source.current()
        path.write_text(json.dumps(payload([dict(RULE, coverage=0.9)])))
        assert wait_for(lambda: source.current().experiments[0].coverage == 0.9)
        good = source.current()
        caplog.set_level(logging.WARNING, logger="seqrec_sdk")
        path.write_text(json.dumps(payload([dict(RULE, weights=[0.9, 0.9])])))
        assert wait_for(lambda: source.status().failures >= 2)
        assert source.current() is good and good != first
        assert "sum to 1" in source.status().last_error
        assert any("keeping the definitions" in r.getMessage() for r in caplog.records)
        path.write_text("{not json")
        with pytest.raises(ExperimentPayloadError, match="not JSON"):
            source.refresh()
        assert source.current() is good
    assert not source._thread.is_alive()  # close() stopped the refresh thread


class PayloadServer:
    """A GrowthBook SDK endpoint stand-in: GET answers (status, body) as set by the test."""

    def __init__(self):
        self.reply = (200, "{}")
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                status, body = outer.reply
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/features/sdk-test"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def endpoint():
    srv = PayloadServer()
    yield srv
    srv.stop()


def test_url_source_loads_refreshes_and_survives_a_failing_endpoint(endpoint):
    endpoint.reply = (200, json.dumps(payload([RULE])))
    source = GrowthBookSource(endpoint.url, feature=FEATURE, refresh_s=None)
    assert source.current().experiments[0].key == "ranker-test"
    endpoint.reply = (500, "oops")
    with pytest.raises(ExperimentPayloadError, match="HTTP 500") as info:
        source.refresh()
    assert info.value.status == 500 and info.value.url == endpoint.url
    endpoint.reply = (200, json.dumps(payload([dict(RULE, key="renamed")])))
    assert source.refresh().experiments[0].key == "renamed"
    assert (source.status().failures, source.status().last_error) == (1, None)
    source.close()


def test_the_first_load_fails_loudly(endpoint, dead_url, tmp_path):
    endpoint.reply = (200, json.dumps({"features": {}}))
    with pytest.raises(ExperimentPayloadError, match="not in the payload"):
        GrowthBookSource(endpoint.url, feature=FEATURE)
    with pytest.raises(Exception, match="GrowthBook payload") as info:
        GrowthBookSource(dead_url + "/api/features/x", feature=FEATURE)
    assert type(info.value).__name__ == "ConnectionFailed"
    with pytest.raises(FileNotFoundError):
        GrowthBookSource(path=tmp_path / "missing.json", feature=FEATURE)
    with pytest.raises(ValueError, match="exactly one"):
        GrowthBookSource(feature=FEATURE)


def test_ready_checks_the_payloads_versions(server, tmp_path):
    path = tmp_path / "features.json"
    path.write_text(json.dumps(payload([RULE], default="2.0")))
    with Client(server.url, experiments=GrowthBookSource(path=path, feature=FEATURE,
                                                         refresh_s=None)) as client:
        assert client.ready()
    paths = [r.path for r in server.requests]
    assert paths == ["/predictions/seqrec/2.0", "/predictions/seqrec/1.0"]


def test_requests_during_refreshes_each_see_one_whole_definition(server, tmp_path):
    # two definitions that send every user to different experiments and versions
    a = payload([dict(RULE, key="exp-a", coverage=1.0, namespace=None)], default="1.0")
    b = payload([dict(RULE, key="exp-b", variations=["2.0", "1.0"], coverage=1.0,
                      namespace=None)], default="2.0")
    path = tmp_path / "features.json"
    path.write_text(json.dumps(a))
    expected = {key: parse_features(p, FEATURE).experiments[0] for key, p in
                (("exp-a", a), ("exp-b", b))}
    exposures = []
    source = GrowthBookSource(path=path, feature=FEATURE, refresh_s=0.005)
    stop = threading.Event()

    def flip():
        i = 0
        while not stop.is_set():
            i += 1
            tmp = tmp_path / f"next-{i}.json"
            tmp.write_text(json.dumps(b if i % 2 else a))
            tmp.replace(path)  # atomic, as a deploy tool would write it
            time.sleep(0.003)

    flipper = threading.Thread(target=flip)
    flipper.start()
    with Client(server.url, experiments=source, on_exposure=exposures.append) as client:
        client.recommend_many([{"history": [1], "k": 2, "user_id": f"u{i}"} for i in range(300)],
                              max_workers=4)
    stop.set()
    flipper.join()
    assert {e.experiment_key for e in exposures} == {"exp-a", "exp-b"}  # refreshed mid-run
    for e in exposures:
        variant = expected[e.experiment_key].assign(e.user_id)
        assert (e.variant, e.model_version) == (variant.name, variant.model_version)
