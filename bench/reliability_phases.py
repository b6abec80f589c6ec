"""The phases of bench/reliability.py, each on the running server: hostile input (fuzz), the
load ramp and overload, the soak, a killed worker, a rollout, the whole server down and back.
Each records its properties (PROPERTIES) and returns its figures; bench/reliability.py runs them
in order and writes the report.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import List, Optional

import numpy as np

from bench.reliability_load import Conn, describe, drive_sdk, load, restarts_logged, summarize, timeline
from devtools.fuzz_oracle import Catalog, check_answer, same_ranking, worker_input
from devtools.fuzz_requests import generate, http_cases
from devtools.local_server import LocalTorchServe
from devtools.ts_probes import metric_sum, metrics_text, server_rss_mb, worker_pids

ROOT = Path(__file__).resolve().parents[1]


class Properties:
    """Every property checked so far, in order, each with the phase that measured it (`phase`,
    which main sets as each phase begins)."""

    def __init__(self) -> None:
        self.checked: List[dict] = []
        self.phase: Optional[str] = None

    def check(self, name: str, holds: bool, value, want: str) -> bool:
        self.checked.append({"property": name, "phase": self.phase, "holds": bool(holds), "value": value,
                             "required": want})
        print(f"  [{'ok' if holds else 'FAILS'}] {name}: {value} (required: {want})", flush=True)
        return holds


PROPERTIES = Properties()
prop = PROPERTIES.check


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
        conn = Conn(ts.inference_port, 120)
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
                desc = [d for d in describe(ts) if d["modelVersion"] == "1.0"][0]
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
    workers = {d["modelVersion"]: len(d["workers"]) for d in describe(ts)}
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

