"""The phases of bench/reliability.py that run servers of their own: short-lived keys renewed by
ops/rotate_keys.py under SDK load (keys), and one Client over two TorchServes, one of them killed
and started again under load (hosts). Their fast versions run in make test
(tests/reliability/test_key_rotation.py, tests/sdk/test_hosts_torchserve.py).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Sequence

from bench.reliability_load import drive_sdk, summarize, timeline
from bench.reliability_phases import prop
from devtools import key_rotator
from devtools.local_server import LocalTorchServe, free_ports
from seqrec_sdk import Client, Cooldown

INVALID_KEY = "InvalidKeyException"


class Restartable:
    """A TorchServe that can be killed and started again on the same ports and directory (a new
    key file each time, as a restarted machine's server would have)."""

    def __init__(self, store: Path, models: Sequence[str], workdir: Path, ports: Sequence[int],
                 settings: Dict[str, str] = None, env: Dict[str, str] = None) -> None:
        self.store, self.models, self.workdir = store, list(models), workdir
        self.ports = tuple(ports[:3])  # inference, management, metrics
        self.settings = {"grpc_inference_port": str(ports[3]), "grpc_management_port": str(ports[4]),
                         **(settings or {})}
        self.env = env if env is not None else {"SEQREC_THREADS": "1"}
        self.ts = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    @property
    def key_file(self) -> str:
        return str(self.workdir / "key_file.json")

    def start(self, paths: Sequence[str] = ("/predictions/seqrec",), timeout: float = 300,
              body=None) -> "Restartable":
        deadline = time.monotonic() + timeout
        while True:  # the killed server's ports may linger a moment
            ts = LocalTorchServe(self.store, self.models, workdir=self.workdir, ports=self.ports,
                                 settings=self.settings, env=self.env)
            try:
                ts.start()
                break
            except RuntimeError as e:
                if "already in use" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        self.ts = ts
        ts.wait_ready(list(paths), timeout=max(1.0, deadline - time.monotonic()), body=body)
        return self

    def kill(self) -> None:
        os.killpg(self.ts.proc.pid, signal.SIGKILL)  # no goodbye: connections just drop
        self.ts.stop()

    def stop(self) -> None:
        if self.ts is not None:
            self.ts.stop()


def _auth_errors(records: List[dict]) -> int:
    return sum(r["outcome"] == "error" and str(r["reason"]).startswith("AuthError") for r in records)


def phase_keys(store: Path, models: Sequence[str], work: Path, bodies: List[dict], fallback_ids,
               rate: float, seconds: float, lifetime_min: float = 1.0, env=None) -> dict:
    """A server whose keys live `lifetime_min` minutes (token_expiration_min), ops/rotate_keys.py
    beside it (both keys at half their lifetime), SDK calls for `seconds`: no call may fail."""
    ports = free_ports(5)
    settings = {"grpc_inference_port": str(ports[3]), "grpc_management_port": str(ports[4]),
                "token_expiration_min": str(lifetime_min)}
    ts = LocalTorchServe(store, models, workdir=work / "keys_server", ports=ports[:3], settings=settings,
                         env=env if env is not None else {"SEQREC_THREADS": "1"}).start()
    log_path = ts.dir / "logs" / "rotate_keys.log"
    offset = log_path.stat().st_size if log_path.exists() else 0  # the log is appended to: this run's part
    rotator = key_rotator.start(ts)  # before the wait: the workers may load for longer than a key lives
    try:
        ts.wait_ready(["/predictions/seqrec"], timeout=300, body=bodies[0])
        first_key = ts.key
        client = Client(ts.base_url, token_file=str(ts.key_file), retries=2, fallback=fallback_ids)
        try:
            records = drive_sdk(client, bodies, 4, rate, seconds)
            reloads = client.stats.token_reloads
        finally:
            client.close()
        stale = ts.post(body=bodies[0], token=first_key)
        stale_refused = stale.status_code == 400 and INVALID_KEY in stale.text
        alive = rotator.poll() is None
    finally:
        code = key_rotator.stop(rotator)
        ts.stop()
    with open(log_path, "rb") as f:
        f.seek(offset)
        log = f.read().decode("utf-8", "replace")
    rotations = log.count("rotated the inference and management keys")
    # Tries before the first rotation met a server still starting (no key file, port closed).
    first = log.find("rotated the inference and management keys")
    starting, failures = log[:max(first, 0)].count("rotation failed"), log[max(first, 0):].count("rotation failed")
    s = summarize(records)
    auth = _auth_errors(records)
    s.update(lifetime_s=lifetime_min * 60, seconds=seconds, rate=rate, rotations=rotations,
             rotation_failures=failures, tries_while_starting=starting, token_reloads=reloads, auth_errors=auth,
             first_key_refused_after=stale_refused, rotator_alive_until_stopped=alive, rotator_exit=code,
             timeline=timeline(records), failed_examples=[r for r in records if r["outcome"] != "ok"][:10])
    prop(f"keys: no AuthError over {seconds:.0f} s with keys living {lifetime_min * 60:.0f} s", auth == 0,
         f"{auth} AuthError of {s['calls']} calls", "0")
    prop("keys: no failed call (fallbacks + errors)", s["failed"] == 0,
         f"{s['failed']} of {s['calls']} ({s['reasons']})", "0")
    want = int(seconds // (lifetime_min * 30))  # one rotation per half lifetime
    prop("keys: ops/rotate_keys.py rotated on schedule", rotations >= want and failures == 0 and alive,
         f"{rotations} rotations, {failures} failed after the first ({starting} tries while the server "
         f"started), running until stopped: {alive}", f">= {want}, 0 failed")
    prop("keys: the soak outlived its first key (refused at the end)", stale_refused and seconds > lifetime_min * 60,
         f"first key answered {stale.status_code}", f"400 {INVALID_KEY}")
    return s


def phase_hosts(store: Path, models: Sequence[str], work: Path, bodies: List[dict], fallback_ids,
                rate: float, down_s: float, after_s: float, env=None) -> dict:
    """Two servers, one Client over both; under SDK load one is SIGKILLed (its whole process group),
    stays down `down_s`, and is started again on its ports: no call may fail or fall back, the
    survivor answers alone meanwhile, and the restarted one gets traffic again."""
    ports = free_ports(10)  # one call: ten different ports
    pair = [Restartable(store, models, work / f"host_{n}", ports[i * 5:i * 5 + 5], env=env)
            for i, n in enumerate("ab")]
    ev: dict = {}
    try:
        for srv in pair:
            srv.start(body=bodies[0])
        a, b = pair
        client = Client([a.url, b.url], token_file={a.url: a.key_file, b.url: b.key_file}, retries=2,
                        fallback=fallback_ids, cooldown=Cooldown(base=0.5, max=2.0))

        def during(t0):
            time.sleep(5.0)
            ev["kill_s"] = time.monotonic() - t0
            a.kill()
            time.sleep(down_s)
            ev["restart_s"] = time.monotonic() - t0
            a.start(body=bodies[0])
            ev["ready_s"] = time.monotonic() - t0

        try:
            records = drive_sdk(client, bodies, 4, rate, 5.0 + down_s + 420 + after_s, during, tail=after_s)
            stats = client.stats
        finally:
            client.close()
    finally:
        for srv in pair:
            srv.stop()
    kill, restart, ready = ev.get("kill_s", 0), ev.get("restart_s", 1e9), ev.get("ready_s", 1e9)
    down = [r for r in records if kill + 0.5 < r["t"] < restart]
    back = [r for r in records if r["t"] > ready]
    first_back = next((r["t"] - ready for r in back if r.get("host") == a.url), None)
    s = summarize(records)
    s.update(events=ev, rate=rate, hosts_while_down=dict(Counter(r.get("host") for r in down)),
             hosts_after_ready=dict(Counter(r.get("host") for r in back)),
             first_answer_from_restarted_s=first_back, failovers=stats.failovers,
             marked_down=stats.hosts[a.url].marked_down, token_reloads=stats.token_reloads,
             host_stats={("killed " if url == a.url else "survivor ") + url: dataclasses.asdict(h)
                         for url, h in stats.hosts.items()},
             timeline=timeline(records), failed_examples=[r for r in records if r["outcome"] != "ok"][:10])
    prop("hosts: one of two servers killed and restarted under load, no failed call", s["failed"] == 0,
         f"{s['failed']} of {s['calls']} ({s['reasons']})", "0 fallbacks, 0 errors")
    prop("hosts: the survivor answers alone while the other is down",
         bool(down) and set(s["hosts_while_down"]) == {b.url},
         f"{s['hosts_while_down']}", f"only {b.url}")
    prop("hosts: the restarted server gets traffic again", first_back is not None,
         f"first answer {None if first_back is None else round(first_back, 2)} s after it was ready; "
         f"{s['hosts_after_ready']}", "answers from both")
    return s
