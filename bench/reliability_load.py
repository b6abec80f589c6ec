"""Load generation and measuring for bench/reliability.py: raw keep-alive HTTP clients (the
server, not the SDK), paced seqrec_sdk.Client calls (what a marketplace backend sees), their
summaries, and two server probes (worker-restart lines in the logs, the management API).
"""
from __future__ import annotations

import gzip
import http.client
import random
import threading
import time
from collections import Counter
from typing import Dict, List, Optional

import numpy as np

from devtools.local_server import LocalTorchServe
from devtools.ts_probes import _RESTART_LINES
from seqrec_sdk import Client, SeqrecError


def restarts_logged(ts) -> int:
    """ts_probes.restarts_logged over ts_log.log and the files log4j rolled it into: a long run
    rolls the log over, and a count over ts_log.log alone then drops (it read -262 once)."""
    n = 0
    for f in sorted((ts.dir / "logs").glob("ts_log*")):
        with (gzip.open if f.suffix == ".gz" else open)(f, "rt", errors="replace") as fh:
            n += sum(1 for line in fh if _RESTART_LINES.search(line))
    return n


def pct(xs, q):
    return float(np.percentile(xs, q)) if len(xs) else None


# ---- raw HTTP load (keep-alive http.client per thread): the server, not the SDK
class Conn:
    def __init__(self, port: int, timeout: float):
        self.port, self.timeout, self.c = port, timeout, None

    def post(self, path: str, body: bytes, headers: dict) -> int:
        """status, or -1 for no answer (timeout, reset): the connection is then renewed."""
        try:
            if self.c is None:
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self.c.request("POST", path, body, headers)
            r = self.c.getresponse()
            r.read()
            return r.status
        except (OSError, http.client.HTTPException):
            if self.c is not None:
                self.c.close()
            self.c = None
            return -1


def load(ts: LocalTorchServe, bodies: List[bytes], clients: int, seconds: float,
         rate: Optional[float] = None, timeout: float = 10.0, sample=None) -> dict:
    """`clients` threads for `seconds`: closed loop (rate None) or paced to `rate` requests/s in all.
    After a 503 a closed-loop client waits 25-50 ms, as the SDK's first backoff does."""
    key = ts.key
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    lat: Dict[int, List[float]] = {}
    lock = threading.Lock()
    start = time.monotonic()
    stop = start + seconds
    interval = clients / rate if rate else 0.0

    def client(c: int):
        conn, mine, n = Conn(ts.inference_port, timeout), [], 0
        rng = random.Random(c)
        nxt = start + (c * interval / clients if rate else 0)
        while True:
            now = time.monotonic()
            if rate:
                if nxt > now:
                    time.sleep(nxt - now)
                nxt += interval
            if time.monotonic() >= stop:
                break
            t = time.perf_counter()
            status = conn.post("/predictions/seqrec", bodies[(c * 7919 + n) % len(bodies)], headers)
            mine.append((status, (time.perf_counter() - t) * 1e3))
            n += 1
            if status == 503 and not rate:
                time.sleep(0.025 + 0.025 * rng.random())
        with lock:
            for s, ms in mine:
                lat.setdefault(s, []).append(ms)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    if sample is not None:
        while any(t.is_alive() for t in threads):
            sample()
            time.sleep(min(10.0, max(0.5, stop - time.monotonic())))
    for t in threads:
        t.join(seconds + timeout + 30)
    wall = time.monotonic() - start
    ok = lat.get(200, [])
    every = [x for v in lat.values() for x in v]
    return {"clients": clients, "seconds": round(wall, 2), "target_rps": rate,
            "ok_rps": len(ok) / wall, "p50_ms": pct(ok, 50), "p99_ms": pct(ok, 99),
            "max_ms": max(every) if every else None,
            "status": {str(k): len(v) for k, v in sorted(lat.items())},
            "p99_ms_503": pct(lat.get(503, []), 99)}


# ---- SDK load: what a marketplace backend sees
def drive_sdk(client: Client, bodies: List[dict], threads: int, rate: float, seconds: float,
              during=None, tail: Optional[float] = None) -> List[dict]:
    """Paced Client.recommend calls for at most `seconds`; one record per call: t (s), outcome
    ok/fallback/error, reason, model_version. `during(t0)` runs in this thread while the load goes
    on; with `tail`, the load stops `tail` seconds after it returns."""
    records: List[dict] = []
    lock = threading.Lock()
    t0 = time.monotonic()
    stop = t0 + seconds
    done = threading.Event()
    interval = threads / rate

    def worker(w: int):
        nxt, n, mine = t0 + w * interval / threads, 0, []
        while True:
            now = time.monotonic()
            if nxt > now:
                time.sleep(nxt - now)
            nxt += interval
            t = time.monotonic()
            if t >= stop or done.is_set():
                break
            b = bodies[(w * 7919 + n) % len(bodies)]
            n += 1
            try:
                r = client.recommend(b["history"], k=b["k"])
                rec = {"t": t - t0, "outcome": "fallback" if r.fallback else "ok", "reason": r.fallback_reason,
                       "version": r.model_version, "host": r.host, "ms": (time.monotonic() - t) * 1e3}
            except SeqrecError as e:
                rec = {"t": t - t0, "outcome": "error", "reason": f"{type(e).__name__}: {str(e)[:120]}",
                       "version": None, "host": None, "ms": (time.monotonic() - t) * 1e3}
            mine.append(rec)
        with lock:
            records.extend(mine)

    ts_ = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(threads)]
    for t in ts_:
        t.start()
    if during is not None:
        during(t0)
        if tail is not None:
            time.sleep(tail)
            done.set()
    for t in ts_:
        t.join(seconds + 60)
    return sorted(records, key=lambda r: r["t"])


def timeline(records: List[dict]) -> List[list]:
    """Per second: [t, calls, failed, max latency ms]: where a failure or a latency spike sits."""
    out: Dict[int, list] = {}
    for r in records:
        b = out.setdefault(int(r["t"]), [int(r["t"]), 0, 0, 0.0])
        b[1] += 1
        b[2] += r["outcome"] != "ok"
        b[3] = round(max(b[3], r["ms"]), 1)
    return [out[k] for k in sorted(out)]


def summarize(records: List[dict]) -> dict:
    c = Counter(r["outcome"] for r in records)
    reasons = Counter(r["reason"] for r in records if r["outcome"] != "ok")
    return {"calls": len(records), "ok": c["ok"], "fallbacks": c["fallback"], "errors": c["error"],
            "failed": c["fallback"] + c["error"], "reasons": dict(reasons.most_common(8)),
            "p50_ms": pct([r["ms"] for r in records if r["outcome"] == "ok"], 50),
            "p99_ms": pct([r["ms"] for r in records if r["outcome"] == "ok"], 99)}


def sdk_client(ts: LocalTorchServe, fallback_ids) -> Client:
    """A client as the SDK README configures one: key file, default timeout (1 s connect, 2 s
    read), 2 retries on connection errors, 503/504 and TorchServe's "Worker died.", popular items
    as the fallback."""
    return Client(ts.base_url, token_file=str(ts.key_file), retries=2, fallback=fallback_ids)


def describe(ts, version="all"):
    """The management API's description of seqrec's versions (workers, their pids and status)."""
    import requests
    r = requests.get(f"{ts.management_url}/models/seqrec/{version}",
                     headers={"Authorization": f"Bearer {ts.management_key}"}, timeout=30)
    r.raise_for_status()
    return r.json()

