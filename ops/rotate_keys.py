"""Keep a TorchServe's inference and management keys from expiring: rotate them through the token
API well before their lifetime (`token_expiration_min`, 60 by default) runs out.

    python ops/rotate_keys.py --key-file /srv/torchserve/key_file.json            # forever (a sidecar)
    python ops/rotate_keys.py --key-file key_file.json --once                    # one rotation, e.g. from cron
    python ops/rotate_keys.py --key-file key_file.json --exit-with 4242          # until pid 4242 exits

TorchServe 0.12 never renews a key by itself: an hour after start every call is refused (HTTP 400
InvalidKeyException). `GET <management>/token?type=inference|management` with the API key (which
never expires) swaps in a new key with a fresh lifetime and rewrites key_file.json; the old key is
refused from that moment on. Clients that read the key file (seqrec_sdk.Client(token_file=...),
ops/rollout.py) re-read it when refused, so a rotation costs them no call.

Each round rotates both keys, then sleeps --fraction (0.5) of the lifetime the server just gave
them (read from the file's "expiration time"), or --every seconds: a key is never older than half
its lifetime. The API key and the addresses are re-read every round, so a restarted server (a new
key file) is followed; a server that is down or still starting is retried every second. Standard library only:
it runs wherever TorchServe runs. Exit codes: 0 on --once success or when --exit-with's process
is gone, 1 when --once fails, 2 on bad arguments; SIGTERM ends it cleanly.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Dict, Optional

log = logging.getLogger("seqrec.rotate_keys")
KINDS = ("inference", "management")


def read_keys(path: str, attempts: int = 20) -> dict:
    """key_file.json, parsed. TorchServe rewrites it in place (truncate, then write): a read in
    between sees an empty or partial file, so a parse error is retried for a moment."""
    for i in range(attempts):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if all(isinstance(data.get(k), dict) and data[k].get("key") for k in (*KINDS, "API")):
                return data
        except ValueError:
            pass
        if i + 1 < attempts:
            time.sleep(0.05)
    raise ValueError(f"{path}: not a complete TorchServe key file after {attempts} reads")


def expires_in(keys: dict, kind: str, now: Optional[dt.datetime] = None) -> float:
    """Seconds until the key of this kind expires, from the file's "expiration time" (an ISO
    instant, e.g. 2026-12-02T05:12:24.801167Z)."""
    at = dt.datetime.fromisoformat(keys[kind]["expiration time"])
    return (at - (now or dt.datetime.now(dt.timezone.utc))).total_seconds()


def rotate(management: str, key_file: str, kind: str, timeout: float = 30.0) -> None:
    """One rotation of the `kind` key; raises OSError (server unreachable) or RuntimeError."""
    api_key = read_keys(key_file)["API"]["key"]
    req = urllib.request.Request(f"{management.rstrip('/')}/token?type={kind}",
                                 headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"rotating the {kind} key: HTTP {e.code} {e.read()[:200]!r}") from e


def rotate_all(management: str, key_file: str) -> Dict[str, float]:
    """Both keys rotated; the lifetime (seconds) the server gave each."""
    for kind in KINDS:
        rotate(management, key_file, kind)
    keys = read_keys(key_file)
    return {kind: expires_in(keys, kind) for kind in KINDS}


class Rotator:
    """The loop: rotate, sleep a fraction of the lifetime, again; until stopped."""

    def __init__(self, management: str, key_file: str, fraction: float = 0.5,
                 every: Optional[float] = None, retry: float = 1.0, exit_with: Optional[int] = None) -> None:
        self.management, self.key_file = management, key_file
        self.fraction, self.every, self.retry, self.exit_with = fraction, every, retry, exit_with
        self.rotations = 0
        self.failures = 0
        self.stopped = threading.Event()

    def _alive(self) -> bool:
        if self.exit_with is None:
            return True
        try:
            os.kill(self.exit_with, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process: it exists
            pass
        return True

    def _wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, in steps short enough to notice --exit-with's exit; False when
        the loop should end."""
        deadline = time.monotonic() + seconds
        while not self.stopped.is_set():
            if not self._alive():
                log.info("process %d is gone: stopping", self.exit_with)
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self.stopped.wait(min(left, 1.0))
        return False

    def round(self) -> float:
        """One rotation of both keys; the seconds until the next one."""
        lifetimes = rotate_all(self.management, self.key_file)
        self.rotations += 1
        life = min(lifetimes.values())
        pause = self.every if self.every is not None else max(0.5, self.fraction * life)
        log.info("rotated the inference and management keys (lifetime %.0f s); next in %.1f s", life, pause)
        if pause >= life:
            log.warning("--every %.1f s is not shorter than the keys' lifetime (%.0f s): they will expire", pause, life)
        return pause

    def run(self, once: bool = False) -> int:
        while not self.stopped.is_set():
            try:
                pause = self.round()
            except (OSError, ValueError, RuntimeError) as e:  # down, restarting, or a stale file
                self.failures += 1
                if once:
                    log.error("rotation failed: %s", e)
                    return 1
                log.warning("rotation failed (%s); retrying in %.0f s", e, self.retry)
                pause = self.retry
            if once or not self._wait(pause):
                return 0
        return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--management", default="http://127.0.0.1:8081", help="TorchServe's management address")
    ap.add_argument("--key-file", default="key_file.json", help="TorchServe's key_file.json (where it was started)")
    ap.add_argument("--fraction", type=float, default=0.5,
                    help="rotate after this share of the keys' lifetime (default 0.5)")
    ap.add_argument("--every", type=float, help="rotate every this many seconds instead")
    ap.add_argument("--retry", type=float, default=1.0,
                    help="seconds between tries while the server is down or still starting (default 1)")
    ap.add_argument("--once", action="store_true", help="rotate once and exit")
    ap.add_argument("--exit-with", type=int, metavar="PID", help="stop when this process (the server) exits")
    args = ap.parse_args(argv)
    if not 0 < args.fraction < 1:
        ap.error(f"--fraction must be in (0, 1), got {args.fraction}")
    if args.every is not None and args.every <= 0:
        ap.error(f"--every must be > 0, got {args.every}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rotator = Rotator(args.management, args.key_file, args.fraction, args.every, args.retry, args.exit_with)
    signal.signal(signal.SIGTERM, lambda *_: rotator.stopped.set())
    return rotator.run(once=args.once)


if __name__ == "__main__":
    sys.exit(main())
