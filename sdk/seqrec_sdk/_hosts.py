"""Several serving hosts behind one Client: which host the next attempt goes to. Private: use
:class:`seqrec_sdk.Client` (``Client(["http://h1:8080", "http://h2:8080"], ...)``).

Round-robin over the healthy hosts. A host that fails the way a dead or drained server fails
(connection error, 503/504, TorchServe's "Worker died.") leaves the rotation for a cooldown that
doubles with each failure in a row (``Cooldown``), then gets one real request as its probe: an
answer puts it back, another failure sends it out for longer, and a probe that gets no answer in
time (a restarted server queues requests while its workers load) is retried on another host. A
refused key is not an answer: the key is re-read and the probe goes on. No host is ever excluded for good:
when all are down they are still tried, soonest back first, so that the caller's fallback only
serves when every host has failed this very call.

    pool = HostPool([Host(url, tokens) for url in endpoints(urls)], Cooldown(base=1.0, max=30.0))
    host = pool.pick(avoid=tried)        # the next host to send to
    pool.report(host, Attempt.DOWN)      # what that attempt said about the host
"""

from __future__ import annotations

import enum
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ._tokens import TokenSource
from .models import HostStats

# Module-level so tests can move time on instead of waiting out a cooldown.
_clock: Callable[[], float] = time.monotonic

PathLike = Union[str, "os.PathLike[str]"]
# One value for every host, or a mapping base URL -> value (one key file per server, say).
PerHost = Union[None, str, "os.PathLike[str]", Mapping[str, PathLike]]


@dataclass(frozen=True)
class Cooldown:
    """How long a failing host stays out of the rotation: ``base`` seconds after its first
    failure, doubling with each failed probe in a row, at most ``max``."""

    base: float = 1.0
    max: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.max:
            raise ValueError(f"need 0 < cooldown base <= max, got base={self.base}, max={self.max}")

    def after(self, strikes: int) -> float:
        return min(self.max, self.base * 2 ** (strikes - 1))


class Attempt(enum.Enum):
    """What one HTTP attempt says about the host that got it."""

    OK = "ok"  # a 2xx answer
    REJECTED = "rejected"  # a 4xx: the request's fault (or its key's), the host is fine
    ERROR = "error"  # another 5xx: counted as a failure, but the host did answer
    NO_ANSWER = "no_answer"  # read timeout and the like: counted; a probe that gets it fails
    DOWN = "down"  # connection error, 503/504, "Worker died.": out of the rotation


@dataclass(eq=False)  # hashed by identity: "tried in this call" is a set of hosts
class Host:
    """One base URL, the keys it accepts, and its state (guarded by its pool's lock)."""

    url: str
    tokens: TokenSource
    down_until: Optional[float] = None  # None: in the rotation
    strikes: int = 0  # failures in a row, for the doubling cooldown
    probing: bool = False  # a request is finding out whether it is back (any report ends it)
    counts: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("requests", "ok", "failures", "marked_down"), 0))


# Tiers of pick(), lowest first: a host due for its probe beats the healthy ones, or a
# recovered host would never be asked while another one answers.
_PROBE, _UP, _DOWN = 0, 1, 2


class HostPool:
    """Thread-safe choice of host for each attempt; a single host is simply always chosen."""

    def __init__(self, hosts: Sequence[Host], cooldown: Cooldown) -> None:
        if not hosts:
            raise ValueError("a HostPool needs at least one host")
        self.hosts: Tuple[Host, ...] = tuple(hosts)
        self.cooldown = cooldown
        self._lock = threading.Lock()
        self._next = 0  # round-robin position

    def pick(self, avoid: Collection[Host] = ()) -> Host:
        """The host for the next attempt: not one in ``avoid`` (those this call already tried)
        while another is left, then a host due for its probe, then a healthy one in turn, then
        the down host soonest back."""
        with self._lock:
            now = _clock()
            n = len(self.hosts)
            start, self._next = self._next, (self._next + 1) % n
            best, best_key = self.hosts[0], None
            for i in range(n):
                host = self.hosts[(start + i) % n]
                tier = self._tier(host, now)
                key = (host in avoid, tier, host.down_until if tier == _DOWN else 0.0, i)
                if best_key is None or key < best_key:
                    best, best_key = host, key
            if best_key is not None and best_key[1] == _PROBE:
                best.probing = True
            return best

    def report(self, host: Host, attempt: Attempt, settled: bool = True) -> Optional[str]:
        """Count an attempt and update the host's state; "down" when this attempt took it out of
        the rotation, "up" when it brought it back, else None (for the caller's log).
        ``settled=False``: only counted; the call goes on on this host (a refused key, re-read),
        so the host's state and a probe it holds are left to that next attempt."""
        with self._lock:
            if not settled:
                host.counts["requests"] += 1
                return None
            was_probe, host.probing = host.probing, False
            host.counts["requests"] += 1
            if attempt is Attempt.OK:
                host.counts["ok"] += 1
            elif attempt is not Attempt.REJECTED:
                host.counts["failures"] += 1
            if attempt in (Attempt.OK, Attempt.REJECTED, Attempt.ERROR):  # it answered
                back = host.down_until is not None
                host.down_until, host.strikes = None, 0
                return "up" if back else None
            if attempt is Attempt.NO_ANSWER and not was_probe:
                return None  # slow is not dead: a read timeout alone keeps a host in rotation
            now = _clock()
            if host.down_until is not None and now < host.down_until:
                return None  # already out (calls that were in flight when it went down)
            host.strikes += 1
            host.down_until = now + self.cooldown.after(host.strikes)
            host.counts["marked_down"] += 1
            return "down"

    def is_down(self, host: Host) -> bool:
        """Out of the rotation now (cooling down or waiting for its probe)."""
        with self._lock:
            return host.down_until is not None

    def release(self, host: Host) -> None:
        """An attempt that ended without saying anything about the host (a bug on our side):
        free its probe so that another request can make it."""
        with self._lock:
            host.probing = False

    def snapshot(self) -> Dict[str, HostStats]:
        with self._lock:
            return {h.url: HostStats(down=h.down_until is not None, **h.counts) for h in self.hosts}

    def _tier(self, host: Host, now: float) -> int:
        if host.down_until is None:
            return _UP
        return _PROBE if now >= host.down_until and not host.probing else _DOWN


def endpoints(base_url: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """The base URLs of ``Client(base_url)``: one string or a sequence of them, each with its
    scheme, no duplicates; trailing slashes dropped."""
    urls: List[object] = [base_url] if isinstance(base_url, str) else list(base_url)
    if not urls:
        raise ValueError("give at least one base URL, e.g. Client(['http://10.0.0.1:8080', "
                         "'http://10.0.0.2:8080'])")
    out: List[str] = []
    for url in urls:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"each base URL must be a string starting with http:// or https://, "
                             f"e.g. 'http://127.0.0.1:8080'; got {url!r}")
        url = url.rstrip("/")
        if url in out:
            raise ValueError(f"base URL {url!r} is given twice: list each host once")
        out.append(url)
    return tuple(out)


def token_sources(urls: Sequence[str], token: PerHost, token_file: PerHost,
                  management_token: Optional[str]) -> Tuple[TokenSource, ...]:
    """One TokenSource per host: the same object for all of them (a key re-read after a refusal
    then serves every host), or one each when ``token`` or ``token_file`` maps base URLs to
    values (each TorchServe writes its own key_file.json)."""
    if not isinstance(token, Mapping) and not isinstance(token_file, Mapping):
        shared = TokenSource(token, token_file, management_token)  # type: ignore[arg-type]
        return tuple(shared for _ in urls)
    tokens, files = _per_host(urls, token, "token"), _per_host(urls, token_file, "token_file")
    return tuple(TokenSource(tokens[u], files[u], management_token)  # type: ignore[arg-type]
                 for u in urls)


def _per_host(urls: Sequence[str], value: PerHost, name: str) -> Dict[str, Optional[PathLike]]:
    if not isinstance(value, Mapping):
        return {u: value for u in urls}
    given = {str(k).rstrip("/"): v for k, v in value.items()}
    missing = [u for u in urls if u not in given]
    extra = sorted(set(given) - set(urls))
    if missing or extra:
        raise ValueError(f"{name} maps base URLs to values: it needs exactly the client's "
                         f"base URLs; missing {missing}, not a base URL {extra}")
    return given
