"""Move a running TorchServe's default model version to another one without dropping a request.

    python ops/rollout.py --to 2.0 --from 1.0 --key-file /srv/torchserve/key_file.json
    python ops/rollout.py --park 2.0 --key-file ...        # 0 workers until its rollout
    python ops/rollout.py --to 1.0 --from 2.0 --key-file ... # rollback: the same, reversed

Standard library only: runs wherever TorchServe runs. With the model API off (config.properties:
enable_model_api=false) TorchServe cannot register an archive while running, so the new version
must be loaded at start next to the old one, and may wait there with no workers:

    torchserve --start --ncs --ts-config config.properties \\
               --models seqrec=seqrec_1.0.mar seqrec=seqrec_2.0.mar
    python ops/rollout.py --park 2.0 --key-file key_file.json

Steps, each checked; a failure before step 4 leaves the default where it was:
  1. the new version is registered (GET /models/<model>/<to>);
  2. it gets --workers workers, one at a time (PUT ?min_worker=n&max_worker=n&synchronous=true),
     each READY before the next starts;
  3. a real prediction on /predictions/<model>/<to> answers 200 with model_version <to>;
  4. PUT /models/<model>/<to>/set-default: requests to /predictions/<model> now go to <to>;
  5. --drain seconds for the requests already queued on <from> to finish;
  6. <from> is scaled to 0 workers (unregistering is part of the model API, which is off): it
     stays registered, so a rollback is this script with --to and --from swapped.
Clients that pin a version (/predictions/<model>/<from>, e.g. an SDK experiment arm) get 503
after step 6: move them first. Keys come from TorchServe's key_file.json; an expired management
key is rotated with the API key (TorchServe rewrites the file).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional, Tuple

try:
    from ops.rotate_keys import read_keys
except ImportError:  # run as a script: ops/ itself is on sys.path
    from rotate_keys import read_keys

log = logging.getLogger("seqrec.rollout")


class RolloutError(RuntimeError):
    pass


class TorchServeAdmin:
    def __init__(self, management: str, inference: str, key_file: str, model: str = "seqrec",
                 timeout: float = 120.0) -> None:
        self.management, self.inference = management.rstrip("/"), inference.rstrip("/")
        self.key_file, self.model, self.timeout = key_file, model, timeout

    # -- HTTP with TorchServe's keys
    def _key(self, kind: str) -> str:
        return read_keys(self.key_file)[kind]["key"]  # waits out a rotation's rewrite of the file

    def _call(self, method: str, url: str, kind: str, body: Optional[bytes] = None) -> Tuple[int, str]:
        req = urllib.request.Request(url, data=body, method=method,
                                     headers={"Authorization": f"Bearer {self._key(kind)}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def call(self, method: str, url: str, kind: str = "management", body: Optional[dict] = None) -> Tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        status, text = self._call(method, url, kind, data)
        if status == 400 and "InvalidKeyException" in text:  # expired: rotate once, re-read
            log.info("%s key refused; rotating it with the API key", kind)
            rotated, why = self._call("GET", f"{self.management}/token?type={kind}", "API")
            if rotated != 200:
                raise RolloutError(f"cannot rotate the {kind} key: {rotated} {why}")
            status, text = self._call(method, url, kind, data)
        return status, text

    def _model_url(self, version: str, suffix: str = "") -> str:
        return f"{self.management}/models/{urllib.parse.quote(self.model)}/{urllib.parse.quote(version)}{suffix}"

    # -- the steps
    def describe(self, version: str) -> dict:
        status, text = self.call("GET", self._model_url(version))
        if status != 200:
            raise RolloutError(f"{self.model} {version} is not registered ({status}): {text.strip()}; "
                               "load it at start with --models (the model API is off)")
        return json.loads(text)[0]

    def scale(self, version: str, workers: int) -> None:
        status, text = self.call("PUT", self._model_url(version, f"?min_worker={workers}&max_worker={workers}"
                                                                 "&synchronous=true"))
        if status != 200:
            raise RolloutError(f"scaling {self.model} {version} to {workers} failed ({status}): {text.strip()}")
        deadline = time.monotonic() + self.timeout
        while True:
            workers_now = self.describe(version).get("workers", [])
            ready = sum(w.get("status") == "READY" for w in workers_now)
            if ready == workers and len(workers_now) == workers:
                return
            if time.monotonic() > deadline:
                raise RolloutError(f"{self.model} {version}: {ready} of {workers} workers READY after "
                                   f"{self.timeout:.0f}s")
            time.sleep(0.5)

    def smoke_test(self, version: str) -> None:
        url = f"{self.inference}/predictions/{urllib.parse.quote(self.model)}/{urllib.parse.quote(version)}"
        status, text = self.call("POST", url, kind="inference", body={"history": [], "k": 1})
        try:
            answered = json.loads(text).get("model_version") if status == 200 else None
        except ValueError:
            answered = None
        if answered != version:
            raise RolloutError(f"{self.model} {version} does not answer a prediction: {status} {text[:300]}")

    def set_default(self, version: str) -> None:
        status, text = self.call("PUT", self._model_url(version, "/set-default"))
        if status != 200:
            raise RolloutError(f"set-default {version} failed ({status}): {text.strip()}")


def rollout(admin: TorchServeAdmin, to: str, frm: Optional[str], workers: int, drain: float) -> None:
    t0 = time.monotonic()
    have = len(admin.describe(to).get("workers", []))
    log.info("1/6 %s %s is registered (%d workers)", admin.model, to, have)
    # One worker at a time: a starting worker loads torch and the model at full CPU, which the
    # workers serving traffic on the same cores feel; two at once doubles the dip.
    for n in range(min(have, workers) + 1, workers + 1):
        admin.scale(to, n)
    log.info("2/6 %s has %d READY workers (%.1fs)", to, workers, time.monotonic() - t0)
    admin.smoke_test(to)
    log.info("3/6 %s answers predictions", to)
    admin.set_default(to)
    log.info("4/6 default version is now %s", to)
    if frm:
        time.sleep(drain)
        log.info("5/6 drained %s for %.1fs", frm, drain)
        admin.scale(frm, 0)
        log.info("6/6 %s retired (0 workers, still registered for a rollback)", frm)
    log.info("rollout to %s done in %.1fs", to, time.monotonic() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--to", help="version to make the default")
    ap.add_argument("--from", dest="frm", help="version to retire afterwards (scaled to 0 workers)")
    ap.add_argument("--park", metavar="VERSION", help="only scale VERSION to 0 workers, e.g. right after start")
    ap.add_argument("--model", default="seqrec")
    ap.add_argument("--workers", type=int, default=2, help="workers for --to (handler/model-config.yaml: 2)")
    ap.add_argument("--drain", type=float, default=5.0, help="seconds between set-default and retiring --from")
    ap.add_argument("--management", default="http://127.0.0.1:8081")
    ap.add_argument("--inference", default="http://127.0.0.1:8080")
    ap.add_argument("--key-file", default="key_file.json", help="TorchServe's key_file.json")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per step")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.to and not args.park:
        ap.error("--to or --park is required")
    admin = TorchServeAdmin(args.management, args.inference, args.key_file, args.model, args.timeout)
    try:
        if args.park:
            admin.describe(args.park)
            admin.scale(args.park, 0)
            log.info("%s %s parked: 0 workers", args.model, args.park)
        if args.to:
            rollout(admin, args.to, args.frm, args.workers, args.drain)
    except (RolloutError, OSError, ValueError) as e:
        log.error("rollout stopped: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
