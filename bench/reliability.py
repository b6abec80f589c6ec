"""Reliability benchmark: a real TorchServe (shipped config.properties and model-config.yaml, loopback,
token auth) under hostile input, load, faults and a rollout. Writes bench/results/reliability.json.

    python bench/reliability.py                       # the full run, ~17 min on 2 cores
    python bench/reliability.py --soak-seconds 60 --fuzz 2000 --step-seconds 5   # a quick look
    python bench/reliability.py --phases kill         # one phase (~2 min): merged into the file

With --phases (a comma-separated subset of the names below), only those phases run, on the same
server setup, and their results replace those phases' entries in the existing --out file: the other
phases' figures and properties stay, and "phases" records the commit, date and load of the run
that produced each phase. kill, rollout and down load the server at half the knee's requests/s:
without ramp in the run, the knee comes from the file (or --fault-rate).

Phases, in order, on one server (seqrec 1.0 the default, 2.0 loaded and parked at 0 workers):
  fuzz      --fuzz hostile/valid bodies + frontend-only cases from 8 clients: every bad one 4xx with
            a clear message, every valid one the in-process handler's answer; 5xx, worker
            restarts (pids, frontend log, Requests5XX) and server RSS before/after;
  ramp      closed-loop clients at 1, 2, 4, ... until requests/s stops rising (+5% twice): the
            knee (lowest concurrency within 5% of the best), p50/p99 there; then an overload level
            past job_queue_size (+ what the workers hold): 503s expected, never unbounded latency;
  soak      --soak-seconds at 70% of the knee's requests/s (paced): zero errors, RSS growth < 5%;
  kill      SIGKILL one worker (its pid) under SDK load: TorchServe restarts it; failed SDK calls;
  rollout   under SDK load: ops/rollout.py --to 2.0 --from 1.0 (scale up, smoke test,
            set-default, drain, scale 1.0 to 0): zero failed calls;
  down      SIGKILL the whole server under SDK load, restart it on the same ports: the same Client
            serves flagged fallbacks while it is down and real answers once it is back.
Each property is listed under "properties" with its measured value; one that does not hold is
reported as failing, and the run goes on. Clients run on the same 2 cores as the server.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import http.client
import json
import logging
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from devtools.fuzz_requests import Catalog, check_answer, generate, http_cases, same_ranking, worker_input
from devtools.local_server import LocalTorchServe, archive, free_ports
from seqrec_sdk import Client, SeqrecError
from bench.serve_bench import build_export, request_bodies
from devtools.ts_probes import (_RESTART_LINES, metric_sum, metrics_text, server_processes,
                       server_rss_mb, worker_pids)

MODEL_CONFIG = ROOT / "handler" / "model-config.yaml"
PROPS: List[dict] = []
PHASES = ("fuzz", "ramp", "soak", "kill", "rollout", "down")  # the order they run in
# Where each phase's figures live in the result, and how its properties' names begin (files written
# before properties carried their phase are matched by these prefixes).
PHASE_KEYS = {"fuzz": ("fuzz",), "ramp": ("ramp",), "soak": ("soak",), "kill": ("kill_worker",),
              "rollout": ("rollout",), "down": ("server_down",)}
PHASE_PREFIXES = {"fuzz": ("fuzz:",), "ramp": ("load:",), "soak": ("soak:",), "kill": ("kill worker:",),
                  "rollout": ("rollout:",), "down": ("server down:", "server back:")}
_phase: Optional[str] = None  # the phase now running: its properties carry its name


def prop(name: str, holds: bool, value, want: str) -> bool:
    PROPS.append({"property": name, "phase": _phase, "holds": bool(holds), "value": value, "required": want})
    print(f"  [{'ok' if holds else 'FAILS'}] {name}: {value} (required: {want})", flush=True)
    return holds


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


def shipped(path: Path, key: str, sep: str) -> int:
    for line in path.read_text().splitlines():
        if line.strip().startswith(key + sep):
            return int(line.split(sep, 1)[1].strip())
    raise KeyError(key)


# ---- raw HTTP load (keep-alive http.client per thread): the server, not the SDK
class _Conn:
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
        conn, mine, n = _Conn(ts.inference_port, timeout), [], 0
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
                       "version": r.model_version, "ms": (time.monotonic() - t) * 1e3}
            except SeqrecError as e:
                rec = {"t": t - t0, "outcome": "error", "reason": f"{type(e).__name__}: {str(e)[:120]}",
                       "version": None, "ms": (time.monotonic() - t) * 1e3}
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


def relabel(export: Path, version: str, out: Path) -> Path:
    """A copy of an export whose metadata.json says model_version=version (files are hashed,
    metadata.json is not)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(export, out, ignore=shutil.ignore_patterns("train"))
    meta = json.loads((out / "metadata.json").read_text())
    meta["model_version"] = version
    (out / "metadata.json").write_text(json.dumps(meta))
    return out


# ---- phases
def phase_fuzz(ts, export, n: int) -> dict:
    from devtools.inprocess import load_handler, run_batch

    cat = Catalog.from_export(export)
    cases = list(generate(cat, n, seed=11)) + http_cases(cat, seed=11)
    random.Random(11).shuffle(cases)
    pids, restarts = worker_pids(ts), restarts_logged(ts)
    e5 = metric_sum(metrics_text(ts), "Requests5XX")
    rss = [server_rss_mb(ts)]
    key = ts.key
    results: List = [None] * len(cases)
    half = len(cases) // 2
    todo = iter(range(half))
    lock = threading.Lock()
    t0 = time.monotonic()

    def client():
        conn = _Conn(ts.inference_port, 120)
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            c = cases[i]
            headers = {"Content-Type": c.content_type, "Authorization": f"Bearer {key}"}
            try:
                if conn.c is None:
                    conn.c = http.client.HTTPConnection("127.0.0.1", ts.inference_port, timeout=120)
                conn.c.request("POST", "/predictions/seqrec" + c.query, c.data, headers)
                r = conn.c.getresponse()
                text = r.read()
                try:
                    body = json.loads(text)
                except ValueError:
                    body = text[:300]
                results[i] = (r.status, body)
                if r.getheader("connection", "").lower() == "close":
                    conn.c.close()
                    conn.c = None
            except (OSError, http.client.HTTPException) as e:
                results[i] = (-1, repr(e))
                if conn.c is not None:
                    conn.c.close()
                conn.c = None

    # Two rounds: the first grows the JVM heap and the workers' allocator arenas to what the
    # biggest bodies need (a one-off); stable means the second round does not grow it further.
    for first, last in ((0, half), (half, len(cases))):
        todo = iter(range(first, last))
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rss.append(server_rss_mb(ts))
    wall = time.monotonic() - t0
    h, ctx = load_handler(export)
    failures, statuses, kinds = [], Counter(), Counter()
    for case, (status, body) in zip(cases, results):
        statuses[status] += 1
        kinds["valid" if case.valid else "bad"] += 1
        problem = check_answer(case, status, body, cat)
        if problem is None and case.valid:
            [want] = run_batch(h, ctx, [worker_input(case)])
            problem = same_ranking(body, json.loads(want))
        if problem:
            failures.append({"kind": case.kind, "content_type": case.content_type,
                             "body": case.data[:120].decode("utf-8", "replace"), "problem": problem[:300]})
    out = {"requests": len(cases), "valid": kinds["valid"], "bad": kinds["bad"], "seconds": round(wall, 1),
           "status": {str(k): v for k, v in sorted(statuses.items())}, "wrong": len(failures),
           "wrong_examples": failures[:10], "rss_before": rss[0], "rss_after_round_1": rss[1],
           "rss_after_round_2": rss[2],
           "worker_pids_unchanged": worker_pids(ts) == pids,
           "restarts_logged": restarts_logged(ts) - restarts,
           "requests_5xx_metric": metric_sum(metrics_text(ts), "Requests5XX") - e5}
    n5 = sum(v for k, v in statuses.items() if k >= 500 or k < 0)
    prop("fuzz: every request answered as the contract says", not failures, f"{len(failures)} wrong of {len(cases)}", "0")
    prop("fuzz: no 5xx and no unanswered request", n5 == 0, n5, "0")
    prop("fuzz: no worker restart", out["worker_pids_unchanged"] and out["restarts_logged"] == 0,
         f"pids unchanged={out['worker_pids_unchanged']}, restart lines={out['restarts_logged']}", "same pids, 0 lines")
    first = (rss[1]["total_mb"] - rss[0]["total_mb"]) / rss[0]["total_mb"]
    growth = (rss[2]["total_mb"] - rss[1]["total_mb"]) / rss[1]["total_mb"]
    out["rss_growth_round_1"], out["rss_growth_round_2"] = first, growth
    prop("fuzz: server memory stable (second half of the fuzz vs first)", growth < 0.05,
         f"{rss[0]['total_mb']:.0f} -> {rss[1]['total_mb']:.0f} MiB after the first half ({first:+.1%}), "
         f"-> {rss[2]['total_mb']:.0f} MiB after the second ({growth:+.1%})", "< +5% in the second half")
    return out


def phase_ramp(ts, bodies, step: float, queue: int, capacity: int) -> dict:
    levels, best, flat = [], 0.0, 0
    c = 1
    while c <= 512:
        r = load(ts, bodies, c, step)
        levels.append(r)
        print(f"  ramp c={c}: {r['ok_rps']:.0f} ok/s p50 {r['p50_ms']:.0f} ms p99 {r['p99_ms']:.0f} ms {r['status']}", flush=True)
        if r["ok_rps"] > best * 1.05:
            best, flat = r["ok_rps"], 0
        else:
            flat += 1
        if flat >= 2:
            break
        c *= 2
    top = max(r["ok_rps"] for r in levels)
    knee = next(r for r in levels if r["ok_rps"] >= 0.95 * top)
    # Past the knee: twice the best throughput offered open-loop (each client paced; a 503 does not
    # make it send sooner), from enough clients to fill the job queue and the workers' batches.
    over_c = 2 * (queue + capacity)
    over = load(ts, bodies, over_c, step * 1.5, rate=2 * top)
    print(f"  overload {2 * top:.0f} req/s offered from {over_c} clients: {over['ok_rps']:.0f} ok/s "
          f"p50 {over['p50_ms']} p99 {over['p99_ms']} max {over['max_ms']} {over['status']}", flush=True)
    out = {"levels": levels, "knee": {"clients": knee["clients"], "ok_rps": knee["ok_rps"],
                                      "p50_ms": knee["p50_ms"], "p99_ms": knee["p99_ms"]},
           "best_ok_rps": top, "overload": over, "job_queue_size": queue, "in_workers": capacity,
           "queue_wait_bound_s": queue / top}
    errors = sum(v for r in levels + [over] for k, v in r["status"].items() if k not in ("200", "503"))
    shed = over["status"].get("503", 0)
    prop("load: past the knee requests are shed with 503", shed > 0,
         f"{shed} x 503 of {sum(over['status'].values())} at {2 * top:.0f} req/s offered", "> 0")
    prop("load: bounded latency past the knee (p99 of answered requests)", over["p99_ms"] is not None and over["p99_ms"] < 2000,
         f"{over['p99_ms']:.0f} ms" if over["p99_ms"] else None, "< 2000 ms (the SDK's read timeout)")
    prop("load: no request unanswered or failed other than 503", errors == 0, errors, "0")
    return out


def phase_soak(ts, bodies, rate: float, clients: int, seconds: float) -> dict:
    samples = []
    t0 = time.monotonic()

    def sample():
        samples.append({"t": round(time.monotonic() - t0, 1), **server_rss_mb(ts)})

    r = load(ts, bodies, clients, seconds, rate=rate, sample=sample)
    sample()
    window = min(60.0, seconds / 5)
    first = [s["total_mb"] for s in samples if s["t"] <= window]
    last = [s["total_mb"] for s in samples if s["t"] >= samples[-1]["t"] - window]
    growth = (np.mean(last) - np.mean(first)) / np.mean(first)
    errors = sum(v for k, v in r["status"].items() if k != "200")
    r.update({"rss_samples": samples, "rss_first_mb": float(np.mean(first)), "rss_last_mb": float(np.mean(last)),
              "rss_growth": float(growth), "errors": errors})
    prop(f"soak: zero errors over {seconds:.0f} s at {rate:.0f} req/s", errors == 0,
         f"{errors} errors in {sum(r['status'].values())} requests ({r['ok_rps']:.0f} ok/s)", "0")
    prop("soak: memory growth", growth < 0.05, f"{np.mean(first):.0f} -> {np.mean(last):.0f} MiB ({growth:+.2%})", "< +5%")
    return r


class _KeepWarnings(logging.Handler):
    """The SDK's fallback warnings (they carry the error: status, message), kept while it is attached."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage()[:300])


def phase_kill_worker(ts, client, bodies, rate: float, seconds: float) -> dict:
    killed = {}

    def during(t0):
        time.sleep(min(5.0, seconds / 4))
        pid = worker_pids(ts)["1.0"][0]
        killed.update(pid=pid, t=time.monotonic() - t0)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                desc = [d for d in _describe(ts) if d["modelVersion"] == "1.0"][0]
                ready = [w for w in desc["workers"] if w["status"] == "READY"]
                if len(ready) == 2 and pid not in [w["pid"] for w in ready]:
                    killed["ready_again_s"] = time.monotonic() - t0 - killed["t"]
                    killed["new_pids"] = [w["pid"] for w in ready]
                    return
            except Exception:  # noqa: BLE001 -- the management API may hiccup; keep polling
                pass
            time.sleep(0.25)

    restarts = restarts_logged(ts)
    retries = client.stats.retries
    sdk_log = logging.getLogger("seqrec_sdk")
    keep, level = _KeepWarnings(), sdk_log.level
    sdk_log.addHandler(keep)
    sdk_log.setLevel(logging.WARNING)
    try:
        records = drive_sdk(client, bodies, 8, rate, seconds, during)
    finally:
        sdk_log.removeHandler(keep)
        sdk_log.setLevel(level)
    s = summarize(records)
    s.update(killed=killed, restart_lines=restarts_logged(ts) - restarts, timeline=timeline(records),
             rate=rate, sdk_retries=client.stats.retries - retries, sdk_warnings=keep.messages[:10])
    s["failed_examples"] = [r for r in records if r["outcome"] != "ok"][:10]
    prop("kill worker: TorchServe restarts it", "ready_again_s" in killed,
         f"READY again after {killed.get('ready_again_s', float('nan')):.1f} s (new pid {killed.get('new_pids')})", "restarted")
    prop("kill worker: failed SDK calls (fallbacks + errors)", s["failed"] == 0,
         f"{s['failed']} of {s['calls']} ({s['reasons']})", "0, else reported")
    return s


def _describe(ts, version="all"):
    import requests
    r = requests.get(f"{ts.management_url}/models/seqrec/{version}",
                     headers={"Authorization": f"Bearer {ts.management_key}"}, timeout=30)
    r.raise_for_status()
    return r.json()


def rollout_cmd(ts, *args) -> List[str]:
    return [sys.executable, str(ROOT / "ops" / "rollout.py"), "--management", ts.management_url,
            "--inference", ts.base_url, "--key-file", str(ts.key_file), *args]


def phase_rollout(ts, client, bodies, rate: float, seconds: float) -> dict:
    run: dict = {}

    def during(t0):
        time.sleep(min(5.0, seconds / 5))
        run["start_s"] = time.monotonic() - t0
        p = subprocess.run(rollout_cmd(ts, "--to", "2.0", "--from", "1.0", "--workers", "2", "--drain", "3"),
                           capture_output=True, text=True, timeout=300)
        run.update(rc=p.returncode, end_s=time.monotonic() - t0, log=p.stderr[-3000:])

    records = drive_sdk(client, bodies, 8, rate, seconds, during)
    s = summarize(records)
    before = [r["version"] for r in records if r["t"] < run.get("start_s", 0) and r["outcome"] == "ok"]
    after = [r["version"] for r in records if r["t"] > run.get("end_s", 1e9) and r["outcome"] == "ok"]
    workers = {d["modelVersion"]: len(d["workers"]) for d in _describe(ts)}
    s.update(rollout=run, timeline=timeline(records), versions_before=dict(Counter(before)), versions_after=dict(Counter(after)), workers_after=workers,
             failed_examples=[r for r in records if r["outcome"] != "ok"][:10])
    print(run.get("log", ""), flush=True)
    prop("rollout: ops/rollout.py succeeds under load", run.get("rc") == 0, f"rc={run.get('rc')} in {run.get('end_s', 0) - run.get('start_s', 0):.1f} s", "rc=0")
    prop("rollout: zero failed requests", s["failed"] == 0, f"{s['failed']} of {s['calls']} ({s['reasons']})", "0")
    prop("rollout: traffic moved from 1.0 to 2.0, 1.0 retired",
         set(before) == {"1.0"} and set(after) == {"2.0"} and workers.get("1.0") == 0,
         f"before {dict(Counter(before))}, after {dict(Counter(after))}, workers {workers}", "1.0 -> 2.0, 1.0 at 0 workers")
    return s


def phase_down(ts: LocalTorchServe, client, bodies, rate: float, down_s: float, after_s: float, start_server) -> dict:
    ev: dict = {}
    holder = {"ts": ts}

    def during(t0):
        time.sleep(3.0)
        ev["kill_s"] = time.monotonic() - t0
        os.killpg(ts.proc.pid, signal.SIGKILL)  # launcher, Java frontend, every worker
        ts.stop()
        time.sleep(down_s)
        ev["restart_s"] = time.monotonic() - t0
        tries = 0
        while True:  # the ports may linger in TIME_WAIT a moment
            tries += 1
            try:
                holder["ts"] = start_server()
                break
            except RuntimeError as e:
                if "already in use" not in str(e) or time.monotonic() - t0 > ev["restart_s"] + 120:
                    raise
                time.sleep(1.0)
        holder["ts"].wait_ready(["/predictions/seqrec"], timeout=300)
        ev["ready_s"] = time.monotonic() - t0
        ev["start_tries"] = tries

    total = 3.0 + down_s + 420 + after_s  # bounded; the load stops after_s after readiness
    records = drive_sdk(client, bodies, 4, rate, total, during, tail=after_s)
    kill, ready = ev.get("kill_s", 0), ev.get("ready_s", total)
    down = [r for r in records if kill + 0.5 < r["t"] < ev.get("restart_s", total)]
    back = [r for r in records if r["t"] > ready]
    first_real = next((r["t"] - ready for r in back if r["outcome"] == "ok"), None)
    s = {"events": ev, "during_down": summarize(down), "after_ready": summarize(back),
         "first_real_answer_after_ready_s": first_real, "token_reloads": client.stats.token_reloads}
    prop("server down: flagged fallbacks, nothing raised",
         down and all(r["outcome"] == "fallback" for r in down),
         f"{summarize(down)['fallbacks']} fallbacks, {summarize(down)['errors']} errors, {summarize(down)['ok']} ok of {len(down)} calls while down",
         "every call a fallback")
    tail = [r for r in back if r["t"] > ready + 2.0]
    prop("server back: real answers, same Client object", first_real is not None and tail and all(r["outcome"] == "ok" for r in tail),
         f"first real answer {first_real if first_real is None else round(first_real, 2)} s after ready; "
         f"{sum(r['outcome'] == 'ok' for r in tail)} ok of {len(tail)} from 2 s after ready", "all ok")
    return s, holder["ts"]


def parse_phases(text: str) -> List[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if names == ["all"]:
        return list(PHASES)
    unknown = [x for x in names if x not in PHASES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown phase(s) {unknown}: choose from {', '.join(PHASES)} or all")
    return [x for x in PHASES if x in names]


def phase_of(p: dict) -> Optional[str]:
    if p.get("phase"):
        return p["phase"]
    return next((ph for ph, pre in PHASE_PREFIXES.items() if p["property"].startswith(pre)), None)


def merge(old: dict, new: dict, ran: List[str]) -> dict:
    """`old` (a previous run's file) with the phases in `ran` replaced by `new`'s: figures,
    properties and per-phase provenance; everything else of `old` kept as it was."""
    out = dict(old)
    if "phases" not in out:  # a file from before per-phase records: all its phases from one run
        out["phases"] = {ph: {k: old.get(k) for k in ("commit", "dirty", "date_utc")}
                         for ph in PHASES if any(k in old for k in PHASE_KEYS[ph])}
    out["phases"] = {**out["phases"], **new["phases"]}
    for ph in ran:
        for k in PHASE_KEYS[ph]:
            if k in new:
                out[k] = new[k]
    kept = [p for p in old.get("properties", []) if phase_of(p) not in ran]
    fresh = [p for p in new["properties"] if p.get("phase") in ran]
    out["properties"] = sorted(kept + fresh, key=lambda p: PHASES.index(phase_of(p)) if phase_of(p) in PHASES else len(PHASES))
    out["failing"] = [p["property"] for p in out["properties"] if not p["holds"]]
    out["note"] = ("merged: the top-level commit, date_utc, machine, setup and wall_s are those of the last "
                   "full run; each phase's own run is under phases")
    return out


def main(argv=None) -> int:
    logging.getLogger("seqrec_sdk").setLevel(logging.ERROR)  # each fallback logs a WARNING; counted instead
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=50_000, help="catalogue size of the served export")
    ap.add_argument("--fuzz", type=int, default=10_000, help="fuzz requests (plus the frontend-only cases)")
    ap.add_argument("--step-seconds", type=float, default=10.0, help="per ramp level")
    ap.add_argument("--soak-seconds", type=float, default=600.0)
    ap.add_argument("--fault-seconds", type=float, default=30.0, help="SDK load around a worker kill / a rollout")
    ap.add_argument("--down-seconds", type=float, default=10.0, help="how long the killed server stays down")
    ap.add_argument("--job-queue-size", type=int, help="override config.properties' job_queue_size")
    ap.add_argument("--work", type=Path, default=Path("/tmp/seqrec_reliability"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reliability.json")
    ap.add_argument("--phases", type=parse_phases, default=list(PHASES),
                    help=f"comma-separated subset of {','.join(PHASES)} (default all); a subset is merged into --out")
    ap.add_argument("--fault-rate", type=float,
                    help="requests/s of the SDK load in kill/rollout/down (default half the knee's)")
    args = ap.parse_args(argv)
    phases = args.phases
    subset = phases != list(PHASES)
    previous = json.loads(args.out.read_text()) if subset and args.out.exists() else None
    if "ramp" not in phases and not (previous or {}).get("ramp", {}).get("knee"):
        if "soak" in phases or (args.fault_rate is None and {"kill", "rollout", "down"} & set(phases)):
            ap.error(f"no ramp knee in {args.out} to size the load: add ramp to --phases (or give --fault-rate)")
    t_start = time.monotonic()
    queue = args.job_queue_size or shipped(ROOT / "config.properties", "job_queue_size", "=")
    workers, batch = shipped(MODEL_CONFIG, "minWorkers", ":"), shipped(MODEL_CONFIG, "batchSize", ":")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "handler", "config.properties", "archive.sh", "sdk",
                                 "bench/reliability.py"], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    result = {
        "benchmark": "reliability",
        "commit": commit,
        "dirty": dirty,
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "loadavg_start": os.getloadavg()},
        "setup": {"items": args.items, "server": f"TorchServe 0.12, config.properties as shipped (job_queue_size={queue}), "
                  f"handler/model-config.yaml ({workers} workers, batchSize {batch}), token auth, loopback",
                  "clients": "same machine: raw keep-alive http.client threads (fuzz, ramp, soak); "
                             "seqrec_sdk.Client with key file, retries=2, default timeouts, popular fallback (faults, rollout)",
                  "args": {k: str(v) for k, v in vars(args).items()}},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    result["phases"] = {}
    phase_t0: Dict[str, float] = {}

    def begin(ph: str) -> bool:
        """Whether `ph` runs; if so it is now the current phase (its properties carry its name)."""
        global _phase
        if ph not in phases:
            return False
        _phase = ph
        phase_t0[ph] = time.monotonic()
        result["phases"][ph] = {"commit": commit, "dirty": dirty,
                                "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                "loadavg_start": os.getloadavg()}
        print(ph, flush=True)
        return True

    def save():
        if _phase in phase_t0 and "wall_s" not in result["phases"][_phase]:  # just finished
            result["phases"][_phase].update(wall_s=round(time.monotonic() - phase_t0[_phase], 1),
                                            loadavg_end=os.getloadavg())
        result["properties"] = PROPS
        result["failing"] = [p["property"] for p in PROPS if not p["holds"]]
        result["wall_s"] = round(time.monotonic() - t_start, 1)
        out = merge(previous, result, phases) if subset and previous is not None else result
        args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")

    # One export, two version labels: the arms of the rollout (same weights). The 1.0 copy is
    # also what the fuzz's oracle and in-process reference read.
    # The export is cached in --work, keyed by the committed model/ and train/ trees: an export
    # built by older training code can fail the handler's load-time checks (all workers down).
    code = subprocess.run(["git", "rev-parse", "HEAD:model", "HEAD:train"], cwd=ROOT, capture_output=True,
                          text=True).stdout.split()
    tag = "".join(h[:6] for h in code) or "nogit"
    export = relabel(build_export(args.items, args.work / f"export_{args.items}_{tag}"), "1.0",
                     args.work / f"export_{args.items}_{tag}_v1.0")
    store = args.work / "model_store"
    archive(export, store, MODEL_CONFIG, version="2.0")
    archive(export, store, MODEL_CONFIG)
    models = ["seqrec=seqrec_1.0.mar", "seqrec=seqrec_2.0.mar"]
    ports = free_ports(3)
    grpc = free_ports(2)  # TorchServe always opens its gRPC APIs too (7070/7071 by default)
    settings = {"grpc_inference_port": str(grpc[0]), "grpc_management_port": str(grpc[1])}
    if args.job_queue_size:
        settings["job_queue_size"] = str(args.job_queue_size)

    def start_server() -> LocalTorchServe:
        return LocalTorchServe(store, models, workdir=args.work / "server", ports=ports, settings=settings,
                               env={"SEQREC_THREADS": None}).start()

    shutil.rmtree(args.work / "server" / "logs", ignore_errors=True)  # this run's logs only
    bodies = request_bodies(export)
    raw = [json.dumps(b).encode() for b in bodies]
    items = Catalog.from_export(export)
    fallback_ids = [items.ids[i - 1] for i in items.popular_order[:100]]
    ts = start_server()
    try:
        ts.wait_ready(["/predictions/seqrec/1.0", "/predictions/seqrec/2.0"], timeout=600, body=bodies[0])
        park = subprocess.run(rollout_cmd(ts, "--park", "2.0"), capture_output=True, text=True, timeout=300)
        if park.returncode != 0:
            raise RuntimeError(f"parking 2.0 failed: {park.stderr}")
        print(f"server up (1.0 the default, 2.0 parked) after {time.monotonic() - t_start:.0f} s", flush=True)
        result["server"] = {"rss_at_start": server_rss_mb(ts), "processes": server_processes(ts)}

        if begin("fuzz"):
            result["fuzz"] = phase_fuzz(ts, export, args.fuzz)
            save()
        if begin("ramp"):
            result["ramp"] = phase_ramp(ts, raw, args.step_seconds, queue, workers * batch)
            save()
        # The knee sizes the soak and the fault load: this run's ramp, else the file's (a subset run).
        knee = (result.get("ramp") or (previous or {}).get("ramp") or {}).get("knee")
        knee_from = "this run" if "ramp" in result else f"{args.out.name} (ramp of {(previous or {}).get('phases', {}).get('ramp', {}).get('commit') or (previous or {}).get('commit')})"
        if begin("soak"):
            soak_rate = 0.7 * knee["ok_rps"]
            print(f"soak at {soak_rate:.0f} req/s for {args.soak_seconds:.0f} s", flush=True)
            result["soak"] = phase_soak(ts, raw, soak_rate, max(4, knee["clients"]), args.soak_seconds)
            save()
        fault_rate = args.fault_rate if args.fault_rate is not None else (0.5 * knee["ok_rps"] if knee else None)
        client = sdk_client(ts, fallback_ids)
        if begin("kill"):
            result["phases"]["kill"].update(fault_rate=fault_rate, knee_from=None if args.fault_rate else knee_from)
            result["kill_worker"] = phase_kill_worker(ts, client, bodies, fault_rate, args.fault_seconds)
            save()
        if begin("rollout"):
            result["phases"]["rollout"].update(fault_rate=fault_rate, knee_from=None if args.fault_rate else knee_from)
            result["rollout"] = phase_rollout(ts, client, bodies, fault_rate, args.fault_seconds)
            save()
        if begin("down"):
            result["phases"]["down"].update(fault_rate=min(fault_rate, 40.0))
            print("(kill the server)", flush=True)
            result["server_down"], ts = phase_down(ts, client, bodies, min(fault_rate, 40.0), args.down_seconds,
                                                   10.0, start_server)
        client.close()
    finally:
        ts.stop()
        result["machine"]["loadavg_end"] = os.getloadavg()
        save()
    print(f"wrote {args.out}; failing: {result['failing'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
