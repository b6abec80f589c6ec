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
            serves flagged fallbacks while it is down and real answers once it is back;
  keys      a server of its own whose keys live --keys-lifetime-min minutes (1), ops/rotate_keys.py
            beside it, --keys-seconds (420) of SDK load: 0 AuthError, 0 failed calls;
  hosts     two servers of their own, one Client over both: one SIGKILLed under load, down
            --down-seconds, started again: 0 failed calls, 0 fallbacks, traffic back on it.
Each property is listed under "properties" with its measured value; one that does not hold is
reported as failing, and the run goes on. Clients run on the same 2 cores as the server.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from bench.reliability_fleet import phase_hosts, phase_keys
from bench.reliability_load import sdk_client
from bench.reliability_phases import (PROPERTIES, phase_down, phase_fuzz, phase_kill_worker, phase_ramp,
                                      phase_rollout, phase_soak, rollout_cmd)
from bench.serve_bench import build_export, request_bodies
from devtools.fuzz_oracle import Catalog
from devtools.local_server import LocalTorchServe, archive, free_ports
from devtools.ts_probes import server_processes, server_rss_mb

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIG = ROOT / "handler" / "model-config.yaml"
# This benchmark's code: a run with any of them changed is marked dirty.
BENCH_FILES = ("bench/reliability.py", "bench/reliability_phases.py", "bench/reliability_load.py",
               "bench/reliability_fleet.py", "ops", "devtools/key_rotator.py")
PHASES = ("fuzz", "ramp", "soak", "kill", "rollout", "down", "keys", "hosts")  # the order they run in
# Where each phase's figures live in the result, and how its properties' names begin (files written
# before properties carried their phase are matched by these prefixes).
PHASE_KEYS = {"fuzz": ("fuzz",), "ramp": ("ramp",), "soak": ("soak",), "kill": ("kill_worker",),
              "rollout": ("rollout",), "down": ("server_down",), "keys": ("key_rotation",),
              "hosts": ("two_hosts",)}
PHASE_PREFIXES = {"fuzz": ("fuzz:",), "ramp": ("load:",), "soak": ("soak:",), "kill": ("kill worker:",),
                  "rollout": ("rollout:",), "down": ("server down:", "server back:"), "keys": ("keys:",),
                  "hosts": ("hosts:",)}


def shipped(path: Path, key: str, sep: str) -> int:
    for line in path.read_text().splitlines():
        if line.strip().startswith(key + sep):
            return int(line.split(sep, 1)[1].strip())
    raise KeyError(key)


def relabel(export: Path, version: str, out: Path) -> Path:
    """A copy of an export whose metadata.json says model_version=version (files are hashed,
    metadata.json is not)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(export, out, ignore=shutil.ignore_patterns("train"))
    meta = json.loads((out / "metadata.json").read_text())
    meta["model_version"] = version
    (out / "metadata.json").write_text(json.dumps(meta))
    return out



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
    ap.add_argument("--keys-seconds", type=float, default=420.0, help="SDK load while short-lived keys rotate")
    ap.add_argument("--keys-lifetime-min", type=float, default=1.0, help="token_expiration_min of the keys phase")
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
        if "soak" in phases or (args.fault_rate is None and {"kill", "rollout", "down", "keys", "hosts"} & set(phases)):
            ap.error(f"no ramp knee in {args.out} to size the load: add ramp to --phases (or give --fault-rate)")
    t_start = time.monotonic()
    queue = args.job_queue_size or shipped(ROOT / "config.properties", "job_queue_size", "=")
    workers, batch = shipped(MODEL_CONFIG, "minWorkers", ":"), shipped(MODEL_CONFIG, "batchSize", ":")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "handler", "config.properties", "archive.sh", "sdk",
                                 *BENCH_FILES], cwd=ROOT, capture_output=True, text=True).stdout.strip())
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
        if ph not in phases:
            return False
        PROPERTIES.phase = ph
        phase_t0[ph] = time.monotonic()
        result["phases"][ph] = {"commit": commit, "dirty": dirty,
                                "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                "loadavg_start": os.getloadavg()}
        print(ph, flush=True)
        return True

    def save():
        ph = PROPERTIES.phase
        if ph in phase_t0 and "wall_s" not in result["phases"][ph]:  # just finished
            result["phases"][ph].update(wall_s=round(time.monotonic() - phase_t0[ph], 1),
                                        loadavg_end=os.getloadavg())
        result["properties"] = PROPERTIES.checked
        result["failing"] = [p["property"] for p in PROPERTIES.checked if not p["holds"]]
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
            save()
        client.close()
        # Servers of their own, on the same archive (the main one idles meanwhile).
        fleet_env = {"SEQREC_THREADS": "1"}  # two servers' workers share the 2 cores
        if begin("keys"):
            result["phases"]["keys"].update(fault_rate=min(fault_rate, 40.0))
            result["key_rotation"] = phase_keys(store, ["seqrec=seqrec_1.0.mar"], args.work, bodies, fallback_ids,
                                                min(fault_rate, 40.0), args.keys_seconds, args.keys_lifetime_min,
                                                env=fleet_env)
            save()
        if begin("hosts"):
            result["phases"]["hosts"].update(fault_rate=min(fault_rate, 40.0))
            result["two_hosts"] = phase_hosts(store, ["seqrec=seqrec_1.0.mar"], args.work, bodies, fallback_ids,
                                              min(fault_rate, 40.0), args.down_seconds, 10.0, env=fleet_env)
    finally:
        ts.stop()
        result["machine"]["loadavg_end"] = os.getloadavg()
        save()
    print(f"wrote {args.out}; failing: {result['failing'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
