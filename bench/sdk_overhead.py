"""SDK latency overhead over raw requests, against the same local stub server.

    python bench/sdk_overhead.py            # N=2000 sequential calls per method
    python bench/sdk_overhead.py --n 500    # quicker

The stub is seqrec_sdk.testing's fake server, run in its own process (so that its work does not
share this process's GIL) on 127.0.0.1 with token authorization on. Every method sends the same
payload (a 50-item history, k=10) and parses the JSON answer; calls are interleaved round-robin
(rotating the order) so that drift on the machine hits all methods alike. Methods:

  requests_post   requests.post(...) per call: a new TCP connection each time
  session_post    one requests.Session: keep-alive, the fair baseline for the SDK
  sdk             Client.recommend(...)
  sdk_experiment  Client.recommend(..., user_id=...) with a 2-arm experiment and an exposure
                  callback: hashing, versioned URL, exposure record

Wall-clock overheads are differences of noisy latencies (the stub itself takes ~1 ms), so the
client process's CPU time per call is reported too: it isolates the SDK's own work.
Writes bench/results/sdk.json (with `git rev-parse HEAD`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import requests

from seqrec_sdk import Client, Experiment, Variant

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(ms: List[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(ms), "p50": percentile(ms, 50), "p90": percentile(ms, 90),
            "p99": percentile(ms, 99)}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def start_stub() -> "tuple[subprocess.Popen, str]":
    proc = subprocess.Popen(
        [sys.executable, "-m", "seqrec_sdk.testing", "--port", "0", "--token", TOKEN,
         "--versions", "1.0,2.0"],
        stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()  # "listening on http://127.0.0.1:PORT"
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"stub server did not start: {line!r}")
    return proc, line.split()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="timed calls per method")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sdk.json"))
    args = parser.parse_args()

    history = list(range(1, 51))
    payload = {"history": history, "k": 10, "exclude_seen": True}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    proc, url = start_stub()
    try:
        predict = f"{url}/predictions/seqrec"
        session = requests.Session()
        client = Client(url, token=TOKEN, timeout=(1.0, 2.0))
        exposures: List[object] = []
        exp = Experiment("bench", [Variant("a", "1.0"), Variant("b", "2.0")])
        client_exp = Client(url, token=TOKEN, timeout=(1.0, 2.0), experiments=[exp],
                            on_exposure=exposures.append)
        counter = iter(range(10**9))

        methods: Dict[str, Callable[[], object]] = {
            "requests_post": lambda: requests.post(predict, json=payload, headers=headers,
                                                   timeout=(1.0, 2.0)).json(),
            "session_post": lambda: session.post(predict, json=payload, headers=headers,
                                                 timeout=(1.0, 2.0)).json(),
            "sdk": lambda: client.recommend(history, k=10),
            "sdk_experiment": lambda: client_exp.recommend(history, k=10,
                                                           user_id=f"user-{next(counter)}"),
        }
        # sanity: every method gets a real answer with 10 items
        assert len(methods["session_post"]()["items"]) == 10
        assert len(methods["sdk"]().items) == 10 and len(methods["sdk_experiment"]().items) == 10

        names = list(methods)
        timings: Dict[str, List[float]] = {n: [] for n in names}
        cpu_s: Dict[str, float] = {n: 0.0 for n in names}  # this process only: the client's work
        for i in range(args.warmup + args.n):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                c0, t0 = time.process_time(), time.perf_counter()
                methods[name]()
                elapsed = (time.perf_counter() - t0) * 1000.0
                if i >= args.warmup:
                    timings[name].append(elapsed)
                    cpu_s[name] += time.process_time() - c0
        client.close()
        client_exp.close()
        session.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    t0 = time.perf_counter()
    for i in range(100_000):
        exp.assign(f"user-{i}")
    assign_us = (time.perf_counter() - t0) / 100_000 * 1e6

    lat = {n: summary(v) for n, v in timings.items()}

    def overhead(a: str, b: str) -> Dict[str, float]:
        return {k: lat[a][k] - lat[b][k] for k in ("mean", "p50", "p99")}

    result = {
        "benchmark": "sdk_overhead",
        "commit": git("rev-parse", "HEAD"),
        "sdk_files_dirty": bool(git("status", "--porcelain", "--", "sdk", "bench/sdk_overhead.py")),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "requests": requests.__version__},
        "setup": {"n_per_method": args.n, "warmup_per_method": args.warmup,
                  "server": "seqrec_sdk.testing fake server, own process, 127.0.0.1, token auth",
                  "payload": "history of 50 int ids, k=10, exclude_seen=true",
                  "order": "round-robin, rotating, sequential (one call in flight)"},
        "latency_ms": lat,
        "overhead_ms": {
            "sdk_vs_session_post": overhead("sdk", "session_post"),
            "sdk_experiment_vs_session_post": overhead("sdk_experiment", "session_post"),
            "sdk_vs_requests_post": overhead("sdk", "requests_post"),
        },
        # wall-clock overheads above are differences of noisy latencies; the client process's
        # CPU time per call isolates the SDK's own work (the server runs in another process)
        "client_cpu_us_per_call": {n: cpu_s[n] / args.n * 1e6 for n in names},
        "experiment_assign_us": assign_us,
        "exposures_recorded": len(exposures),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("latency_ms", "overhead_ms", "client_cpu_us_per_call",
                                             "experiment_assign_us")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
