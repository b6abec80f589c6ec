"""Security of a real TorchServe started from the shipped config.properties (only ports changed).

    .venv/bin/python -m pytest -q tests/reliability/test_security_torchserve.py

- keys: no key, a wrong one, another kind's key: 400 InvalidKeyException; the SDK raises AuthError
  (never a fallback); an expired key is refused the same way, and a Client reading key_file.json
  recovers, without being re-created, once the key is rotated (token_expiration_min=0.1 here);
- the three ports listen on 127.0.0.1 only; the model API is off (register and unregister: 405);
- a tampered archive (one byte of item_vectors.npy, or of the candidate index candidates.faiss,
  changed, so its sha256 no longer matches metadata.json) never gets a worker and never answers (its requests wait in the queue until the
  client gives up); an archive URL outside allowed_urls is not even registered.
"""
import time
import zipfile

import pytest
import requests
from devtools.local_server import LocalTorchServe, archive, free_ports
from handler_fixtures import make_export

from handler.seqrec_artifact import INDEX_FILE
from seqrec_sdk import AuthError, Client
from conftest import grpc_ports
from devtools.ts_probes import listening_addresses

pytestmark = pytest.mark.torchserve

INVALID_KEY = "InvalidKeyException"


def auth(key):
    return {"Authorization": f"Bearer {key}"} if key is not None else {}


# ---- on the suite's server
@pytest.mark.parametrize("path", ["/predictions/seqrec", "/predictions/seqrec/1.0", "/ping"])
def test_inference_refuses_missing_wrong_and_other_keys(served, path):
    method = "GET" if path == "/ping" else "POST"
    for header in ({}, auth("wrong"), auth(""), auth(served.management_key), auth(served.api_key),
                   {"Authorization": served.key}, {"Authorization": f"Basic {served.key}"}):
        r = requests.request(method, served.base_url + path, json={"history": []}, headers=header, timeout=30)
        assert r.status_code == 400 and r.json()["type"] == INVALID_KEY, (header, r.status_code, r.text)
    assert requests.request(method, served.base_url + path, json={"history": []}, headers=auth(served.key),
                            timeout=30).status_code == 200


def test_management_refuses_missing_wrong_and_inference_keys(served):
    for header in ({}, auth("wrong"), auth(served.key)):
        r = requests.get(f"{served.management_url}/models", headers=header, timeout=30)
        assert r.status_code == 400 and r.json()["type"] == INVALID_KEY, (header, r.text)


def test_sdk_raises_auth_error_even_with_a_fallback(served, tmp_path):
    wrong_file = tmp_path / "key_file.json"
    wrong_file.write_text('{"inference": {"key": "wrong"}, "management": {"key": "x"}, "API": {"key": "y"}}')
    for kwargs in ({"token": "wrong"}, {"token_file": str(wrong_file)}, {}):
        with Client(served.base_url, fallback=[1, 2, 3], retries=1, **kwargs) as client:
            with pytest.raises(AuthError) as e:
                client.recommend([], k=2)
            assert e.value.status == 400 and client.stats.fallbacks == 0


def test_ports_listen_on_loopback_only(served):
    """HTTP inference, management and metrics, and the gRPC inference and management APIs that
    TorchServe starts whatever the config says (bound to 127.0.0.1 by its defaults)."""
    grpc = [int(served.settings[k]) for k in ("grpc_inference_port", "grpc_management_port")]
    for port in [*served.ports, *grpc]:
        assert listening_addresses(port) == ["127.0.0.1"], (port, listening_addresses(port))


def test_model_registration_api_is_off(served):
    h = auth(served.management_key)
    r = requests.post(f"{served.management_url}/models", params={"url": "seqrec.mar", "model_name": "x"},
                      headers=h, timeout=30)
    assert r.status_code == 405, r.text
    r = requests.post(f"{served.management_url}/models",
                      params={"url": "https://example.invalid/evil.mar"}, headers=h, timeout=30)
    assert r.status_code == 405, r.text
    r = requests.delete(f"{served.management_url}/models/seqrec/1.0", headers=h, timeout=30)
    assert r.status_code == 405, r.text
    models = requests.get(f"{served.management_url}/models", headers=h, timeout=30).json()["models"]
    assert [m["modelName"] for m in models] == ["seqrec"]


# ---- a second server: keys that expire after 6 s, a tampered archive, a remote URL
def tamper(mar, out, member: str = "item_vectors.npy"):
    """A copy of the .mar with one byte of `member` flipped (metadata.json unchanged)."""
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        assert member in {i.filename for i in src.infolist()}
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(member):
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            dst.writestr(info, data)
    return out


def rotate(ts, kind: str) -> str:
    """A fresh key of this kind (the API key never expires), also written to key_file.json."""
    r = requests.get(f"{ts.management_url}/token", params={"type": kind}, headers=auth(ts.api_key), timeout=30)
    assert r.status_code == 200, r.text
    return ts.management_key if kind == "management" else ts.key


@pytest.fixture(scope="module")
def short_keys(served, tmp_path_factory):
    work = tmp_path_factory.mktemp("short_keys")
    store = work / "store"
    store.mkdir()
    (store / "seqrec.mar").symlink_to(served.model_store / "seqrec.mar")
    tamper(served.model_store / "seqrec.mar", store / "tampered.mar")
    indexed = make_export(work / "indexed", index_spec="hnsw:M=8,ef_construction=20")
    tamper(archive(indexed, work / "indexed_store"), store / "tampered_index.mar", INDEX_FILE)
    closed = free_ports(1)[0]  # nothing listens there
    models = ["seqrec=seqrec.mar", "tampered=tampered.mar", "tampered_index=tampered_index.mar",
              f"remote=http://127.0.0.1:{closed}/remote.mar"]
    with LocalTorchServe(store, models, workdir=work / "server", env={"SEQREC_THREADS": "1"},
                         settings={"token_expiration_min": "0.1", **grpc_ports()}) as ts:
        deadline = time.monotonic() + 180
        while True:  # wait_ready() with a key that may expire while the worker loads
            assert ts.proc.poll() is None and time.monotonic() < deadline, ts.logs()
            try:
                if ts.key_file.exists() and ts.post(token=rotate(ts, "inference"), body={"history": []}).ok:
                    break
            except (requests.ConnectionError, ValueError, KeyError, AssertionError):
                pass
            time.sleep(0.5)
        yield ts


def test_expired_key_is_refused_and_the_sdk_recovers_after_rotation(short_keys):
    ts = short_keys
    key = rotate(ts, "inference")
    client = Client(ts.base_url, token_file=str(ts.key_file), retries=0, fallback=[1])
    assert ts.post(body={"history": []}, token=key).status_code == 200
    assert not client.recommend([], k=1).fallback
    time.sleep(0.1 * 60 + 1)  # token_expiration_min=0.1
    r = ts.post(body={"history": []}, token=key)
    assert r.status_code == 400 and r.json()["type"] == INVALID_KEY, r.text
    with pytest.raises(AuthError):  # the key file still holds the expired key
        client.recommend([], k=1)
    rotate(ts, "inference")          # TorchServe rewrites key_file.json
    recs = client.recommend([], k=1)  # same Client: re-reads the file on refusal
    assert not recs.fallback and len(recs.items) == 1 and client.stats.token_reloads >= 1
    client.close()


@pytest.mark.parametrize("model, member", [("tampered", "item_vectors.npy"), ("tampered_index", INDEX_FILE)])
def test_tampered_archive_never_loads(short_keys, model, member):
    ts = short_keys
    deadline = time.monotonic() + 120
    while f"sha256 mismatch for {member}" not in ts.logs(n=200_000):
        assert time.monotonic() < deadline, ts.logs()
        time.sleep(0.5)
    [desc] = requests.get(f"{ts.management_url}/models/{model}", headers=auth(rotate(ts, "management")),
                          timeout=30).json()
    assert not [w for w in desc["workers"] if w["status"] == "READY"], desc["workers"]
    # No worker ever loads it, so a request waits in its queue: no answer at all (a client's own
    # timeout, e.g. the SDK's 2 s read timeout, ends it), never a prediction.
    try:
        r = ts.post(f"/predictions/{model}", body={"history": []}, token=rotate(ts, "inference"), timeout=5)
        assert r.status_code != 200, r.text
    except requests.Timeout:
        pass


def test_archive_url_outside_allowed_urls_is_not_registered(short_keys):
    ts = short_keys
    models = requests.get(f"{ts.management_url}/models", headers=auth(rotate(ts, "management")),
                          timeout=30).json()["models"]
    assert sorted(m["modelName"] for m in models) == ["seqrec", "tampered", "tampered_index"]
    assert "does not match any allowed URL" in ts.logs(n=200_000)
