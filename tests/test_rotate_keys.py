"""ops/rotate_keys.py against a stand-in for TorchServe's token API (tests/reliability/
test_key_rotation.py runs it against a real one): the schedule, a server that goes away, bad
arguments, a half-written key file."""
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ops import rotate_keys

ROOT = Path(__file__).resolve().parents[1]


class TokenAPI:
    """GET /token?type=inference|management with the API key: a new key of that kind, living
    `lifetime` seconds, written to the key file as TorchServe writes it."""

    def __init__(self, key_file: Path, lifetime: float) -> None:
        self.key_file, self.lifetime, self.calls = key_file, lifetime, []
        self.keys = {"management": "m0", "inference": "i0"}
        self.write()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                kind = self.path.partition("type=")[2]
                ok = self.headers.get("Authorization") == "Bearer api" and kind in api.keys
                if ok:
                    api.calls.append((time.monotonic(), kind))
                    api.keys[kind] = f"{kind[0]}{len(api.calls)}"
                    api.write()
                self.send_response(200 if ok else 400)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def write(self) -> None:
        at = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=self.lifetime)).isoformat().replace("+00:00", "Z")
        self.key_file.write_text(json.dumps({
            **{k: {"key": v, "expiration time": at} for k, v in self.keys.items()}, "API": {"key": "api"}}))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api(tmp_path):
    a = TokenAPI(tmp_path / "key_file.json", lifetime=2.0)
    yield a
    a.close()


def test_both_keys_rotate_at_half_their_lifetime(api):
    r = rotate_keys.Rotator(api.url, str(api.key_file))
    t = threading.Thread(target=r.run)
    t.start()
    time.sleep(3.4)  # rounds at ~0, 1, 2, 3 s
    r.stopped.set()
    t.join(5)
    assert not t.is_alive() and r.failures == 0
    assert 3 <= r.rotations <= 4, api.calls  # 4 unless the machine is very busy
    starts = [at for at, kind in api.calls if kind == "inference"]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(0.9 < g < 1.3 for g in gaps), gaps
    assert {kind for _, kind in api.calls} == {"inference", "management"}


def test_once_exits_0_and_a_refused_api_key_exits_1(api, tmp_path):
    cmd = [sys.executable, str(ROOT / "ops" / "rotate_keys.py"), "--management", api.url,
           "--key-file", str(api.key_file), "--once"]
    assert subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    assert len(api.calls) == 2
    bad = json.loads(api.key_file.read_text())
    bad["API"]["key"] = "wrong"
    api.key_file.write_text(json.dumps(bad))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "HTTP 400" in p.stderr


def test_a_server_that_is_down_is_retried_and_followed_when_back(api):
    api.close()  # down: nothing listens
    r = rotate_keys.Rotator(api.url, str(api.key_file), retry=0.2)
    t = threading.Thread(target=r.run)
    t.start()
    time.sleep(0.7)
    r.stopped.set()
    t.join(5)
    assert r.rotations == 0 and r.failures >= 3


def test_it_stops_when_the_server_process_exits(api):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    r = rotate_keys.Rotator(api.url, str(api.key_file), every=60, exit_with=child.pid)
    t0 = time.monotonic()
    threading.Thread(target=child.wait, daemon=True).start()  # reap it, so its pid is gone
    assert r.run() == 0
    assert 1.0 < time.monotonic() - t0 < 5 and r.rotations == 1


def test_a_half_written_key_file_is_read_again(tmp_path):
    f = tmp_path / "key_file.json"
    full = json.dumps({k: {"key": "x", "expiration time": "2030-01-01T00:00:00Z"} for k in ("inference", "management")}
                      | {"API": {"key": "a"}})
    f.write_text(full[:20])
    threading.Timer(0.2, lambda: f.write_text(full)).start()
    assert rotate_keys.read_keys(str(f))["API"]["key"] == "a"
    f.write_text("")
    with pytest.raises(ValueError, match="not a complete"):
        rotate_keys.read_keys(str(f), attempts=3)


def test_expiry_parsed_from_the_file():
    now = dt.datetime(2026, 12, 2, 5, 0, tzinfo=dt.timezone.utc)
    keys = {"inference": {"key": "k", "expiration time": "2026-12-02T05:01:00.123456789Z"}}
    assert rotate_keys.expires_in(keys, "inference", now) == pytest.approx(60.123, abs=1e-3)


@pytest.mark.parametrize("args", [["--fraction", "1"], ["--fraction", "0"], ["--every", "-1"]])
def test_bad_arguments_exit_2(args):
    p = subprocess.run([sys.executable, str(ROOT / "ops" / "rotate_keys.py"), *args], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2 and "must be" in p.stderr
