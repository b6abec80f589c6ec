"""The archive and config.properties under KServe's TorchServe runtime, for real: the storage layout
ops/kserve_layout.py writes, TorchServe 0.12 started the way the kserve-torchserve runtime starts it
(`torchserve --start --model-store=<dir>/model-store --ts-config=<dir>/config/config.properties`,
no --models) with the pod spec's variables (deploy/kserve/inferenceservice.yaml): the kservev2 and
kserve envelopes answer the items /predictions answers on a plain TorchServe, bad input gets 400,
and the real /metrics holds every metric deploy/prometheus/alerts.yaml uses.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/handler/test_kserve_torchserve.py

One TorchServe at a time: the plain server's answers are recorded and it is stopped before the
KServe ones start; the v1 test runs its own server before the module's v2 server exists.
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
import yaml
from deploy_checks import DEPLOY, parse_exposition, server_metric_names
from handler_fixtures import make_export
from torchserve_fixtures import requires_java

from devtools.local_server import ROOT, LocalTorchServe, archive, free_ports
from ops import kserve_layout

pytestmark = [pytest.mark.torchserve, requires_java]

K = 5
QUIET = {"SEQREC_THREADS": "1", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.fixture(scope="module")
def mar(tmp_path_factory):
    """The shipped archive of a small untrained export: handler/ and handler/model-config.yaml
    (2 workers, batchSize 16) as archive.sh packs them."""
    work = tmp_path_factory.mktemp("kserve")
    return archive(make_export(work / "export"), work / "store")


def histories(ids):
    return {"short": ids[:3], "unknown": ids[3:9] + [999_999], "empty": []}


@pytest.fixture(scope="module")
def reference(mar, tmp_path_factory):
    """(ids, {name: the /predictions answer}) of a plain TorchServe (the shipped config), stopped
    before any KServe server starts."""
    with LocalTorchServe(mar.parent, [f"seqrec={mar.name}"], workdir=tmp_path_factory.mktemp("plain"),
                         env=QUIET) as ts:
        ts.wait_ready()
        r = ts.post(body={"history": [], "k": 50})
        ids = sorted(i["item_id"] for i in r.json()["items"])[:10]  # known, available items
        answers = {}
        for name, history in histories(ids).items():
            r = ts.post(body={"history": history, "k": K})
            assert r.status_code == 200, r.text
            answers[name] = r.json()
    return ids, answers


def kserve_server(mar, work, envelope):
    """A TorchServe on ops/kserve_layout.py's layout, started as the runtime starts it, with the
    InferenceService's variables and free loopback ports (inference and management share one, as
    the layout's 8085 does)."""
    mount = work / "mnt" / "models"
    config = kserve_layout.write_layout(mar, mount, mount=str(mount))
    api, metrics, grpc_i, grpc_m = free_ports(4)
    env = {**QUIET, "TS_SERVICE_ENVELOPE": envelope, "TS_DISABLE_TOKEN_AUTHORIZATION": "true",
           "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{api}", "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{api}",
           "TS_METRICS_ADDRESS": f"http://127.0.0.1:{metrics}",
           "TS_GRPC_INFERENCE_PORT": str(grpc_i), "TS_GRPC_MANAGEMENT_PORT": str(grpc_m)}
    command = ["torchserve", "--start", f"--model-store={mount / kserve_layout.STORE_DIR}", f"--ts-config={config}"]
    return LocalTorchServe(mount / kserve_layout.STORE_DIR, [], workdir=work / "home", ports=(api, api, metrics),
                           env=env, config=None, command=command)


def workers(ts):
    try:
        r = requests.get(f"{ts.management_url}/models/seqrec", timeout=10)  # no key: token auth is off
        return r.json()[0]["workers"] if r.status_code == 200 else []
    except (requests.RequestException, ValueError, KeyError, IndexError):
        return []


def wait_workers_ready(ts, n=2, timeout=180, not_pids=()):
    deadline = time.monotonic() + timeout
    while True:
        ready = [w for w in workers(ts) if w["status"] == "READY" and w["pid"] not in not_pids]
        if len(ready) >= n:
            return ready
        assert ts.running() and time.monotonic() < deadline, f"no {n} READY workers:\n{ts.logs()}"
        time.sleep(0.5)


def post(ts, path, body):
    return requests.post(ts.base_url + path, json=body, timeout=60)  # no Authorization header


def item_ids(answer):
    return [i["item_id"] for i in answer["items"]]


def assert_same_answer(got, want):
    """Same items in the same order, the same other fields; scores equal up to float32 rounding
    (a batch of several histories goes through other kernels than one alone)."""
    assert item_ids(got) == item_ids(want)
    assert [i["score"] for i in got["items"]] == pytest.approx([i["score"] for i in want["items"]], rel=1e-5)
    assert {k: v for k, v in got.items() if k != "items"} == {k: v for k, v in want.items() if k != "items"}


def v2_outputs(r):
    assert r.status_code == 200, r.text
    return {o["name"]: o for o in r.json()["outputs"]}


def tensor(name, data, datatype="INT64", shape=None):
    return {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}


# ---- v1 (kserve) first: its server is stopped before the module's v2 server starts
def test_kserve_v1_envelope_answers_instances_as_the_plain_contract(mar, reference, tmp_path):
    ids, want = reference
    with kserve_server(mar, tmp_path, "kserve") as ts:
        wait_workers_ready(ts)
        instances = [{"history": h, "k": K} for h in histories(ids).values()]
        for path in ("/v1/models/seqrec:predict", "/predictions/seqrec"):
            r = post(ts, path, {"instances": instances})
            assert r.status_code == 200, r.text
            predictions = r.json()["predictions"]
            assert len(predictions) == len(want), path
            for got, expected in zip(predictions, want.values()):
                assert_same_answer(got, expected)
        r = post(ts, "/v1/models/seqrec:predict", {"instances": [instances[0], {"history": ids, "k": 0}]})
        assert r.status_code == 400
        good, bad = r.json()["predictions"]
        assert_same_answer(good, want["short"])
        assert bad["type"] == "BadRequest" and "k must be an integer" in bad["message"]
        r = post(ts, "/predictions/seqrec", {"history": ids, "k": K})  # the plain body: no instances
        assert r.status_code == 400 and '{"instances"' in r.json()["predictions"][0]["message"]


# ---- v2 (kservev2)
@pytest.fixture(scope="module")
def v2_server(mar, reference, tmp_path_factory):
    with kserve_server(mar, tmp_path_factory.mktemp("kservev2"), "kservev2") as ts:
        wait_workers_ready(ts)
        yield ts


def test_layout_config_and_snapshot_batch_size(v2_server):
    config = (v2_server.dir.parent / "mnt" / "models" / kserve_layout.CONFIG_PATH).read_text()
    shipped = (ROOT / "config.properties").read_text()
    changed = {line.split("=", 1)[0] for line in set(config.splitlines()) ^ set(shipped.splitlines())
               if "=" in line and not line.startswith("#")}
    assert changed == {"enable_envvars_config", "inference_address", "management_address", "model_store",
                       "model_snapshot"}
    described = requests.get(f"{v2_server.management_url}/models/seqrec", timeout=10).json()[0]
    # The archive's YAML says batchSize 16; the snapshot's 1 wins, as the envelopes need.
    assert described["batchSize"] == 1 and described["minWorkers"] == 2
    assert not v2_server.key_file.exists()  # token auth off: TorchServe wrote no keys


@pytest.mark.parametrize("path", ["/v2/models/seqrec/infer", "/predictions/seqrec"])
def test_v2_answers_the_items_predictions_answers(v2_server, reference, path):
    ids, want = reference
    for name, history in histories(ids).items():
        r = post(v2_server, path, {"id": f"req-{name}", "inputs": [
            tensor("history", history, shape=[len(history)]), tensor("k", [K], "INT32")]})
        out = v2_outputs(r)
        assert r.json()["id"] == f"req-{name}" and r.json()["model_version"] == "1.0"
        assert out["item_ids"]["data"] == item_ids(want[name]) and out["item_ids"]["datatype"] == "INT64"
        assert out["scores"]["data"] == pytest.approx([i["score"] for i in want[name]["items"]], rel=1e-5)
        assert out["unknown_items"]["data"] == want[name]["unknown_items"]
        assert out["fallback"]["data"] == [want[name]["fallback"] or ""]


def test_v2_string_ids_sent_nested_as_bytes(v2_server, reference):
    ids, want = reference
    history = [str(x) for x in histories(ids)["short"]]
    out = v2_outputs(post(v2_server, "/v2/models/seqrec/infer", {"inputs": [
        tensor("history", [history], "BYTES", [1, len(history)]), tensor("k", [K], "INT64")]}))
    assert out["item_ids"]["data"] == item_ids(want["short"])


@pytest.mark.parametrize("inputs, fragment", [
    ([tensor("history", [1000]), tensor("k", [0], "INT32")], "k must be an integer in 1..1000, got 0"),
    ([tensor("items", [1000])], "unknown input 'items'"),
    ([tensor("history", ["1000", "1003", "1006"], "BYTES")], "send it nested: shape [1, 3]"),
    ([tensor("history", [1.5], "FP64")], "history: datatype must be one of"),
])
def test_v2_bad_input_is_a_400_saying_what(v2_server, inputs, fragment):
    r = post(v2_server, "/v2/models/seqrec/infer", {"inputs": inputs})
    assert r.status_code == 400, r.text
    (err,) = r.json()["outputs"]
    assert err["name"] == "error" and fragment in err["data"][0]


def test_what_the_envelope_refuses_before_the_handler(v2_server, reference):
    """No "inputs", or a shape that does not fit the data: TorchServe's envelope raises before
    handle() runs, and the worker answers 503 "Prediction failed" (docs/http-api.md). The plain
    JSON body is refused the same way: under this envelope every request is parsed as v2."""
    ids, _ = reference
    for body in ({"id": "x"}, {"inputs": [tensor("history", [1, 2, 3], shape=[2])]}, {"history": ids, "k": K}):
        r = post(v2_server, "/v2/models/seqrec/infer", body)
        assert (r.status_code, r.json()["message"]) == (503, "Prediction failed"), (body, r.text)


def test_v2_concurrent_requests_all_answer(v2_server, reference):
    """batchSize 1 (the snapshot's): the envelope's one-answer-per-batch never meets a batch."""
    ids, want = reference
    body = {"inputs": [tensor("history", ids[:3]), tensor("k", [K], "INT32")]}
    statuses, lock = [], threading.Lock()

    def client():
        for _ in range(2):
            r = post(v2_server, "/v2/models/seqrec/infer", body)
            with lock:
                statuses.append((r.status_code, r.json()["outputs"][0]["data"] if r.status_code == 200 else r.text))

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [(200, item_ids(want["short"]))] * 32


def test_deployment_readiness_command_passes(v2_server):
    """deploy/k8s's exec readiness probe, pointed at this server's management port."""
    (c,) = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())["spec"]["template"]["spec"]["containers"]
    code = c["readinessProbe"]["exec"]["command"][-1].replace("127.0.0.1:8081", v2_server.management_url[7:])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def scrape(ts, until=lambda e: True, timeout=20.0):
    """/metrics parsed, once `until` holds: the frontend reads the workers' metric lines from their
    log a moment after the answer."""
    deadline = time.monotonic() + timeout
    while True:
        exposition = parse_exposition(requests.get(f"{ts.metrics_url}/metrics", timeout=10).text)
        if until(exposition) or time.monotonic() > deadline:
            return exposition
        time.sleep(0.3)


def test_metrics_hold_every_name_the_alert_rules_use(v2_server, reference):
    """The real /metrics, parsed, has each metric the rules read, and one answer of each kind (200,
    a 400 from the handler, a 503 from the envelope) moves the counters behind them."""
    ids, _ = reference

    def count(e, name, **labels):
        return sum(e.values(name, **labels))

    before = scrape(v2_server)
    assert v2_outputs(post(v2_server, "/v2/models/seqrec/infer", {"inputs": [tensor("history", ids[:2])]}))
    assert post(v2_server, "/v2/models/seqrec/infer", {"inputs": [tensor("items", ids[:2])]}).status_code == 400
    assert post(v2_server, "/v2/models/seqrec/infer", {"id": "no inputs"}).status_code == 503

    def moved(e):  # each worker's metric lines arrive on their own: wait for both outcomes
        return all(count(e, "SeqrecRequests", Outcome=o) > count(before, "SeqrecRequests", Outcome=o)
                   for o in ("ok", "bad_request"))

    after = scrape(v2_server, moved)
    missing = server_metric_names() - after.names()
    assert not missing, f"alerts.yaml uses {sorted(missing)}, not in /metrics: {sorted(after.names())}"
    assert after.types["SeqrecScoringSeconds"] == "histogram" and after.types["Requests5XX"] == "counter"
    for name, labels, delta in (("SeqrecRequests", {"Outcome": "ok"}, 1),
                                ("SeqrecRequests", {"Outcome": "bad_request"}, 1), ("Requests4XX", {}, 1),
                                ("Requests5XX", {}, 1), ("ts_inference_requests_total", {}, 3)):
        assert count(after, name, **labels) - count(before, name, **labels) >= delta, (name, labels)
    assert after.values("SeqrecScoringSeconds_bucket", le="+Inf")


def test_a_killed_worker_shows_as_a_new_worker_load_time(v2_server):
    """What SeqrecWorkerRestarts reads: TorchServe restarts a dead worker under the same name,
    which reports a new WorkerLoadTime (changes() > 0); there is no restart counter."""
    def load_times(e):
        return {s[1]["WorkerName"]: s[2] for s in e.samples if s[0] == "WorkerLoadTime"}

    before = load_times(scrape(v2_server))
    victim = wait_workers_ready(v2_server)[0]
    os.kill(victim["pid"], signal.SIGKILL)
    wait_workers_ready(v2_server, not_pids={victim["pid"]})
    (name,) = [n for n in before if re.search(rf"W-{victim['id']}-", n)]
    after = load_times(scrape(v2_server, lambda e: load_times(e).get(name) != before[name]))
    assert set(after) == set(before) and after[name] != before[name], (before, after)
