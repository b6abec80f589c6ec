"""A real TorchServe, started and stopped by this module: train -> archive.sh -> HTTP.

    .venv/bin/python -m pytest -q tests/handler/test_torchserve_e2e.py

One server for the module, on free loopback ports, in a scratch directory (its key_file.json and
logs/ land there). TMPDIR/TEMP point into that directory too: TorchServe keeps its pid file in the
temp dir and its worker sockets at <java.io.tmpdir>/.ts.sock.9000, so two servers sharing /tmp
refuse to start or steal each other's workers. The fixture stops exactly the server it started.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    shutil.which("java") is None,
    reason="java not on PATH: TorchServe's frontend needs Java 17 (`make test` installs openjdk-17-jre-headless)")

# Small on purpose: 2 cores shared with the rest of the suite. maxBatchDelay is long enough that
# concurrent requests really meet in one batch.
MODEL_YAML = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 8\nmaxBatchDelay: 50\nresponseTimeout: 60\n"


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _export(out: Path, version: str) -> Path:
    """The training CLI, tiny and one epoch: the handler only needs a real export."""
    if (ROOT / "train" / "__main__.py").exists():
        cmd = [sys.executable, "-m", "train", "--data", "synthetic", "--out", str(out), "--epochs", "1",
               "--version", version, "--set", "synthetic_users=500", "synthetic_items=400"]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"training failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
        return out
    sys.path.insert(0, str(Path(__file__).parent))
    from handler_fixtures import make_export
    return make_export(out, version=version)


class Server:
    def __init__(self, workdir: Path, ports):
        self.dir, (self.inference, self.management, self.metrics) = workdir, ports
        self.base = f"http://127.0.0.1:{self.inference}"
        self.proc = None

    def start(self, models):
        tmp = self.dir / "tmp"
        tmp.mkdir()
        cfg = (ROOT / "config.properties").read_text()
        for key, value in {"inference_address": f"http://127.0.0.1:{self.inference}",
                           "management_address": f"http://127.0.0.1:{self.management}",
                           "metrics_address": f"http://127.0.0.1:{self.metrics}",
                           "model_store": str(self.dir / "model_store"),
                           "metrics_config": str(ROOT / "handler" / "metrics.yaml")}.items():
            cfg, n = re.subn(rf"(?m)^{key}=.*$", f"{key}={value}", cfg)
            assert n == 1, f"config.properties has no single {key}="
        (self.dir / "config.properties").write_text(cfg)
        env = dict(os.environ, TMPDIR=str(tmp), TEMP=str(tmp))
        torchserve = shutil.which("torchserve", path=str(Path(sys.executable).parent)) or "torchserve"
        self.log = open(self.dir / "torchserve.out", "wb")
        self.proc = subprocess.Popen(
            [torchserve, "--start", "--ncs", "--foreground", "--ts-config", "config.properties",
             "--models", *models], cwd=self.dir, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)

    @property
    def key(self):
        return json.loads((self.dir / "key_file.json").read_text())["inference"]["key"]

    def post(self, path="/predictions/seqrec", body=None, data=None, token=True, **kw):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {self.key if token is True else token}"
        payload = json.dumps(body) if data is None else data
        return requests.post(self.base + path, data=payload, headers=headers, timeout=60, **kw)

    def wait_ready(self, paths, timeout=180):
        """Ready = a real prediction answers 200 on every path (/ping says Healthy too early)."""
        deadline = time.monotonic() + timeout
        pending = list(paths)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"torchserve exited with {self.proc.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"torchserve not ready after {timeout}s:\n{self.logs()}")
            try:
                if (self.dir / "key_file.json").exists() and \
                        self.post(pending[0], {"history": [], "k": 1}).status_code == 200:
                    pending.pop(0)
                    continue
            except requests.ConnectionError:
                pass
            time.sleep(0.5)

    def logs(self, n=6000):
        parts = []
        for f in [self.dir / "torchserve.out", *sorted((self.dir / "logs").glob("*.log"))]:
            if f.exists():
                parts.append(f"--- {f.name}\n{f.read_text(errors='replace')[-n:]}")
        return "\n".join(parts)

    def stop(self):
        """SIGTERM the Java frontend this server started (its workers go with it), then make sure
        nothing of our process group is left."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pid_file = self.dir / "tmp" / ".model_server.pid"
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers of the session we created
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("torchserve")
    v1 = _export(work / "export_v1", "1.0")
    v2 = work / "export_v2"  # same weights, another version label: enough to tell the arms apart
    shutil.copytree(v1, v2, ignore=shutil.ignore_patterns("train"))
    meta = json.loads((v2 / "metadata.json").read_text())
    meta["model_version"] = "2.0"
    (v2 / "metadata.json").write_text(json.dumps(meta))
    (work / "model.yaml").write_text(MODEL_YAML)
    for export in (v2, v1):  # v1 last: seqrec.mar -> seqrec_1.0.mar
        r = subprocess.run([str(ROOT / "archive.sh"), str(export), "--out", str(work / "model_store"),
                            "--config", str(work / "model.yaml")], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"))
        assert r.returncode == 0, r.stderr
    srv = Server(work, _free_ports(3))
    try:
        # The stable name (a symlink) for the default version, the versioned file beside it.
        srv.start(["seqrec=seqrec.mar", "seqrec=seqrec_2.0.mar"])
        srv.wait_ready(["/predictions/seqrec", "/predictions/seqrec/2.0"])
        import pandas as pd
        items = pd.read_parquet(v1 / "items.parquet")
        srv.available = items.loc[items["available"], "item_id"].tolist()
        yield srv
    finally:
        srv.stop()


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
    key = json.loads((server.dir / "key_file.json").read_text())["management"]["key"]
    r = requests.get(f"http://127.0.0.1:{server.management}/models/seqrec/2.0?customized=true",
                     headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    [desc] = r.json()
    assert desc["modelVersion"] == "2.0" and desc["workers"][0]["status"] == "READY"
    assert desc["customizedMetadata"]["model_version"] == "2.0"


def test_metrics_endpoint_shows_handler_metrics(server):
    server.post(body={"history": []})
    server.post(data=BAD["k zero"])
    server.post(body={"history": server.available[:2]})
    text = requests.get(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10).text
    for outcome in ("ok", "bad_request", "empty_history"):
        assert re.search(rf'SeqrecRequests\{{Outcome="{outcome}",ModelName="seqrec".*\}} [1-9]', text), text
    assert "SeqrecScoringSeconds_count" in text and "SeqrecBatchSize_bucket" in text
    assert re.search(r'ts_inference_requests_total\{model_name="seqrec",model_version="2.0"', text)


def _batch_histogram(server):
    text = requests.get(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10).text
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
