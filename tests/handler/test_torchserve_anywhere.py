"""config.properties works wherever TorchServe starts: from an unrelated directory, in KServe's
storage layout, and with the README's own command from a repository root, started twice.

    .venv/bin/python -m pytest -q tests/handler/test_torchserve_anywhere.py

Every server is a LocalTorchServe (devtools/local_server.py): its own process session, stopped by
pid also when a test fails (and when the launch was a plain `torchserve --start`, which returns at
once and leaves Java running); TMPDIR/TEMP and key_file.json in its start directory.
"""
import json
import re
import shutil
import subprocess
import time

import pytest
import requests
from handler_fixtures import make_export
from torchserve_fixtures import requires_java

from devtools.local_server import CONFIG, LocalTorchServe, archive, config_ports, ports_in_use

pytestmark = [pytest.mark.torchserve, requires_java]

# What the README tells a user to type in the repository root (the one setup step is the export).
README_START = "export TS_CONFIG_FILE=$PWD/config.properties; torchserve --start --models seqrec.mar"
README_STOP = "torchserve --stop"
GRPC_DEFAULT_PORTS = (7070, 7071)  # TorchServe 0.12 opens them; config.properties does not move them
# Small on purpose: 2 cores shared with the rest of the suite.
MODEL_YAML = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 5\nresponseTimeout: 60\n"
ENV = {"SEQREC_THREADS": "1"}
REWRITTEN = {"inference_address", "management_address", "metrics_address", "model_store",
             "grpc_inference_port", "grpc_management_port"}


@pytest.fixture(scope="module")
def mar(tmp_path_factory):
    """A tiny untrained export's archive (seqrec_1.0.mar), built once for the module."""
    work = tmp_path_factory.mktemp("anywhere")
    (work / "model.yaml").write_text(MODEL_YAML)
    return archive(make_export(work / "export"), work / "store", work / "model.yaml")


def store_with(mar, store):
    """`store`/seqrec.mar: a plain copy, as a deployment's storage would hold it (no symlink)."""
    store.mkdir(parents=True)
    shutil.copyfile(mar, store / "seqrec.mar")
    return store


def assert_answers(ts):
    ts.wait_ready()
    r = ts.post(body={"history": [1000, 1003], "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "1.0" and len(body["items"]) == 3, body


def metrics_until(ts, pattern, timeout: float = 10) -> str:
    """/metrics once it matches `pattern`: the frontend reads metric lines from the worker's log,
    a moment after the answer."""
    deadline = time.monotonic() + timeout
    while True:
        text = requests.get(f"{ts.metrics_url}/metrics", timeout=10).text
        if pattern.search(text) or time.monotonic() > deadline:
            assert pattern.search(text), text
            return text
        time.sleep(0.2)


def test_copied_config_from_an_unrelated_directory(mar, tmp_path):
    """The config in /etc-like place, TorchServe started in a third directory: only addresses and
    model_store are rewritten, and the handler's metrics reach /metrics with their types."""
    store = store_with(mar, tmp_path / "srv" / "model_store")
    config = tmp_path / "etc" / "seqrec" / "config.properties"
    with LocalTorchServe(store, ["seqrec.mar"], workdir=tmp_path / "elsewhere", config_at=config, env=ENV) as ts:
        changed = set(config.read_text().splitlines()) ^ set(CONFIG.read_text().splitlines())
        assert {line.split("=", 1)[0] for line in changed} <= REWRITTEN, changed
        assert_answers(ts)  # after wait_ready's request with an empty history: one "ok"
        ok = re.compile(r'(?m)^SeqrecRequests\{Outcome="ok",ModelName="seqrec".*\} 1\.0$')
        text = metrics_until(ts, ok)
    assert re.search(r'(?m)^SeqrecRequests\{Outcome="empty_history",ModelName="seqrec".*\} [1-9]', text), text
    for name, kind in (("SeqrecRequests", "counter"), ("SeqrecScoringSeconds", "histogram"),
                       ("SeqrecBatchSize", "histogram")):
        assert re.search(rf"(?m)^# TYPE {name} {kind}$", text), (name, text)


def test_kserve_storage_layout(mar, tmp_path):
    """KServe's TorchServe runtime mounts <dir>/config/config.properties and <dir>/model-store/ and
    runs `torchserve --start --model-store=<dir>/model-store --ts-config=<dir>/config/config.properties`
    without --models: the models are the config's model_snapshot, as in KServe's examples."""
    mnt = tmp_path / "mnt" / "models"
    store = store_with(mar, mnt / "model-store")
    config = mnt / "config" / "config.properties"
    snapshot = {"name": "startup.cfg", "modelCount": 1, "models": {"seqrec": {"1.0": {
        "defaultVersion": True, "marName": "seqrec.mar", "minWorkers": 1, "maxWorkers": 1,
        "batchSize": 4, "maxBatchDelay": 5, "responseTimeout": 60}}}}
    command = ["torchserve", "--start", f"--model-store={store}", f"--ts-config={config}"]
    with LocalTorchServe(store, [], workdir=tmp_path / "home" / "model-server", config_at=config, env=ENV,
                         settings={"model_snapshot": json.dumps(snapshot)}, command=command) as ts:
        assert_answers(ts)


def test_readme_command_in_a_repository_root_twice(mar, tmp_path):
    """The README's start, its stop, then its start again: the first run leaves config snapshots in
    logs/config/, which a start without --ncs restores only when no config file is given; with
    TS_CONFIG_FILE set, the second start reads config.properties and loads --models again."""
    ports = config_ports(CONFIG)
    busy = ports_in_use([*ports, *GRPC_DEFAULT_PORTS])
    if busy:
        pytest.skip(f"the shipped ports {busy} are taken on 127.0.0.1 (another TorchServe running?)")
    root = tmp_path / "repo"  # the repository root's layout: config.properties, model_store/
    store = store_with(mar, root / "model_store")
    shutil.copyfile(CONFIG, root / "config.properties")

    def readme_server():
        return LocalTorchServe(store, workdir=root, config=None, ports=ports, env=ENV,
                               command=["bash", "-c", README_START])

    with readme_server() as first:
        assert_answers(first)
        stop = subprocess.run(["bash", "-c", README_STOP], cwd=root, env=first.environ(),
                              capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0 and "TorchServe has stopped." in stop.stdout, (stop.stdout, stop.stderr)
        first.wait_stopped(60)
    assert list((root / "logs" / "config").glob("*.cfg")), "the first run wrote no config snapshot"
    with readme_server() as second:
        assert_answers(second)
