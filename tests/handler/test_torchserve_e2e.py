"""A real TorchServe, started and stopped by this module: train -> archive.sh -> HTTP.

    .venv/bin/python -m pytest -q tests/handler/test_torchserve_e2e.py

One server for the module (devtools/local_server.py: free loopback ports, its own directory for
key_file.json, logs/ and TMPDIR/TEMP), with two versions of a tiny trained model that carries an
HNSW candidate index (so the worker loads faiss and scores through the index, the exact scan
being its fallback); the fixture stops exactly the server it started, even when a test fails.
"""
import json
import re
import threading

import pandas as pd
import pytest
import requests
from torchserve_fixtures import requires_java, two_version_server

pytestmark = [pytest.mark.torchserve, requires_java]

# Small on purpose: 2 cores shared with the rest of the suite. maxBatchDelay is long enough that
# concurrent requests really meet in one batch.
MODEL_YAML = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 8\nmaxBatchDelay: 50\nresponseTimeout: 60\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with two_version_server(tmp_path_factory.mktemp("torchserve"), MODEL_YAML, users=500, items=400,
                            overrides=["index=hnsw:M=8,ef_construction=40"]) as (srv, export):
        items = pd.read_parquet(export / "items.parquet")
        srv.available = items.loc[items["available"], "item_id"].tolist()
        yield srv


def test_valid_request(server):
    hist = server.available[:5]
    r = server.post(body={"history": hist, "k": 7})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"items", "model", "model_version", "unknown_items", "fallback"}
    assert len(body["items"]) == 7 and body["fallback"] is None and body["unknown_items"] == []
    assert all(type(it["item_id"]) is int and isinstance(it["score"], float) for it in body["items"])
    assert not set(it["item_id"] for it in body["items"]) & set(hist)
    assert set(it["item_id"] for it in body["items"]) <= set(server.available)


def test_scores_are_distinct_cosines_through_the_index(server):
    """The score is the cosine (docs/http-api.md), not the seed's tanh that read 1.000 for all."""
    r = server.post(body={"history": server.available[:4], "k": 20})
    assert r.status_code == 200, r.text
    scores = [it["score"] for it in r.json()["items"]]
    assert len(scores) == 20 and len(set(scores)) == 20
    assert scores == sorted(scores, reverse=True) and all(-1 <= s < 0.9999 for s in scores)
    assert "scoring hnsw" in server.logs(n=200_000)  # the worker scored through the index


def test_two_versions_side_by_side(server):
    body = {"history": server.available[:3], "k": 3}
    assert server.post("/predictions/seqrec", body).json()["model_version"] == "1.0"  # first registered = default
    assert server.post("/predictions/seqrec/1.0", body).json()["model_version"] == "1.0"
    assert server.post("/predictions/seqrec/2.0", body).json()["model_version"] == "2.0"
    assert server.post("/predictions/seqrec/3.0", body).status_code == 404


BAD = {
    "not json": "{history: [1]",
    "json array": "[1, 2, 3]",
    "empty body": "",
    "NaN": '{"history": [NaN]}',
    "NaN timestamp": '{"history": [{"item_id": 1, "timestamp": NaN}]}',
    "wrong type history": json.dumps({"history": "1,2,3"}),
    "wrong type id": json.dumps({"history": [1.5]}),
    "bool id": json.dumps({"history": [True]}),
    "k zero": json.dumps({"history": [1], "k": 0}),
    "k too big": json.dumps({"history": [1], "k": 1001}),
    "k string": json.dumps({"history": [1], "k": "10"}),
    "unknown field": json.dumps({"history": [1], "colour": "red"}),
    "unknown event field": json.dumps({"history": [{"item_id": 1, "price": 3}]}),
    "too many ids": json.dumps({"history": list(range(10_001))}),
    "too many exclude": json.dumps({"history": [], "exclude": list(range(10_001))}),
    "nested too deeply": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_400_with_json_error(server, name):
    r = server.post(data=BAD[name])
    assert r.status_code == 400, (name, r.status_code, r.text)
    err = r.json()
    assert err["code"] == 400 and err["type"] == "BadRequest" and err["message"]


def test_concurrent_requests_are_batched_and_answered_one_by_one(server):
    """24 requests at once, every third one bad: batches of several form (batchSize 8,
    maxBatchDelay 50 ms), each request gets its own status, nothing 5xx."""
    n = 24
    bodies = [BAD["k zero"] if i % 3 == 2 else json.dumps({"history": server.available[i:i + 4], "k": 5})
              for i in range(n)]
    before = _batch_histogram(server)
    results = [None] * n
    barrier = threading.Barrier(n)

    def go(i):
        barrier.wait()
        results[i] = server.post(data=bodies[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, r in enumerate(results):
        want = 400 if i % 3 == 2 else 200
        assert r.status_code == want, (i, r.status_code, r.text)
        if want == 200:
            assert len(r.json()["items"]) == 5
    after = _batch_histogram(server)
    batches = after["count"] - before["count"]
    singles = after["le_1"] - before["le_1"]
    assert after["sum"] - before["sum"] == n  # every request went through the handler
    assert batches < n and singles < batches, f"no multi-request batch formed: {before} -> {after}"


def test_token_is_required(server):
    for token in (False, "not-the-key"):
        r = server.post(body={"history": []}, token=token)
        assert r.status_code == 400 and r.json()["type"] == "InvalidKeyException"


def test_management_describe_shows_export_metadata(server):
    r = requests.get(f"{server.management_url}/models/seqrec/2.0?customized=true",
                     headers={"Authorization": f"Bearer {server.management_key}"}, timeout=30)
    assert r.status_code == 200, r.text
    [desc] = r.json()
    assert desc["modelVersion"] == "2.0" and desc["workers"][0]["status"] == "READY"
    assert desc["customizedMetadata"]["model_version"] == "2.0"


def test_metrics_endpoint_shows_handler_metrics(server):
    server.post(body={"history": []})
    server.post(data=BAD["k zero"])
    server.post(body={"history": server.available[:2]})
    text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
    for outcome in ("ok", "bad_request", "empty_history"):
        assert re.search(rf'SeqrecRequests\{{Outcome="{outcome}",ModelName="seqrec".*\}} [1-9]', text), text
    assert "SeqrecScoringSeconds_count" in text and "SeqrecBatchSize_bucket" in text
    assert re.search(r'ts_inference_requests_total\{model_name="seqrec",model_version="2.0"', text)


def _batch_histogram(server):
    text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
    out = {"count": 0.0, "sum": 0.0, "le_1": 0.0}
    for line in text.splitlines():
        if not line.startswith("SeqrecBatchSize") or 'ModelName="seqrec"' not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith("SeqrecBatchSize_count"):
            out["count"] += value
        elif line.startswith("SeqrecBatchSize_sum"):
            out["sum"] += value
        elif 'le="1.0"' in line:
            out["le_1"] += value
    return out
