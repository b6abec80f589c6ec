"""HTTP plumbing: one session, one retry loop over the hosts. Private: use :class:`seqrec_sdk.Client`.

Retries happen here and nowhere else (urllib3's own retries are off), only where a repeat is
safe and useful: connection errors (refused, reset, connect timeout), 503/504, and TorchServe's
"Worker died." answer (500 or 507, see :func:`worker_died`): the batch a killed worker held,
which another or the restarted worker answers. Never on 400, never on another 500 (the handler's
own per-request error is deterministic: a repeat would only triple its latency), never on a read
timeout (the server may still be working on it; retrying would double the load exactly when it is
slow). Predictions are read-only, so a repeat is always safe; these rules only decide where it helps.

With several hosts (_hosts.py) the same rules decide failover: a retry goes to a host this call
has not tried yet, at once (the backoff is for giving the *same* server time), and only comes
back to a tried one, after the backoff, when none is left. Failovers spend the same retry budget.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional, Set, Tuple, Union

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError

from ._hosts import Attempt, Host, HostPool
from .errors import (
    AuthError,
    ConnectionFailed,
    SeqrecError,
    Timeout,
    error_for_status,
)

log = logging.getLogger("seqrec_sdk")

RETRY_STATUSES = frozenset({503, 504})
# When a worker process dies (SIGKILL, the OOM killer, a crash), TorchServe 0.12 answers every
# request of the batch it held {"code": 500, "type": "InternalServerException", "message":
# "Worker died."}; 507 with the same body when the worker's exit code was 137 (SIGKILL), which is
# what a SIGKILL under load gives (frontend WorkerThread.run, finally block; RestJob.sendError
# maps its internal 413 to 507). Those requests were never answered, not wrong: retried like a 503.
# The handler's own 500 is {"type": "InternalServerError", "message": repr(exception)} for one
# request and is not retried. A request that itself kills its worker is repeated at most
# `retries` times.
WORKER_DIED_STATUSES = frozenset({500, 507})
WORKER_DIED_TYPE = "internalserverexception"
WORKER_DIED_MESSAGE = "worker died"

TimeoutArg = Union[float, Tuple[float, float]]

# Module-level so tests can record the backoff instead of waiting for it.
_sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` extra attempts; before attempt n+1 wait a delay drawn from
    [d/2, d] with d = min(backoff_max, backoff_base * 2**n) ("equal jitter": spreads the clients
    of a recovering server apart while keeping a floor)."""

    retries: int = 2
    backoff_base: float = 0.05
    backoff_max: float = 1.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_base < 0 or self.backoff_max < 0:
            raise ValueError("retries and backoff must be >= 0")

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        d = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        return d / 2 + rng() * d / 2


def worker_died(err: SeqrecError) -> bool:
    """True for TorchServe's "Worker died." answer: status 500 or 507, JSON type
    InternalServerException and message "Worker died." (case, spaces and the final dot aside)."""
    return (
        err.status in WORKER_DIED_STATUSES
        and (err.error_type or "").strip().lower() == WORKER_DIED_TYPE
        and err.message.strip().rstrip(".").strip().lower() == WORKER_DIED_MESSAGE
    )


def retryable(err: SeqrecError) -> bool:
    """The one retry rule for an HTTP error answer (connection errors are decided in the loop)."""
    return err.status in RETRY_STATUSES or worker_died(err)


@dataclass(frozen=True)
class _Sent:
    """One attempt: the 2xx response, or the error to raise ``from`` its cause and whether a
    repeat may help; what it says about the host; the key it was sent with."""

    attempt: Attempt
    token: Optional[str]
    response: Optional[requests.Response] = None
    error: Optional[SeqrecError] = None
    cause: Optional[BaseException] = None
    retry: bool = False


class Transport:
    """Sends one logical request: the retry loop, failover between hosts, the token re-read."""

    def __init__(
        self,
        *,
        session: Optional[requests.Session],
        pool_size: int,
        timeout: TimeoutArg,
        policy: RetryPolicy,
        count: Callable[[str], None],
        hosts: int = 1,
    ) -> None:
        self.owns_session = session is None
        if session is None:
            session = requests.Session()
            # max_retries=0: this class is the only retry loop; a connection pool per host
            adapter = HTTPAdapter(pool_connections=max(4, hosts + 1), pool_maxsize=pool_size,
                                  max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session
        self.timeout = timeout
        self.policy = policy
        self._count = count  # "retries", "failovers", "token_reloads"

    def close(self) -> None:
        if self.owns_session:
            self.session.close()

    def request(
        self,
        method: str,
        pool: HostPool,
        path: str,
        *,
        json_body: Any = None,
        token_kind: str = "inference",
        retries: Optional[int] = None,
        host: Optional[Host] = None,
    ) -> Tuple[requests.Response, Host]:
        """The 2xx response and the host that gave it, or raise the matching
        :class:`SeqrecError` (``from`` the cause). ``host`` pins every attempt to that host."""
        max_retries = self.policy.retries if retries is None else retries
        request_id = uuid.uuid4().hex
        attempt = 0
        tried: Set[Host] = set()
        reloaded: Set[Host] = set()
        target = host or pool.pick()
        while True:
            try:
                sent = self._send(method, target, path, json_body, token_kind, request_id)
            except BaseException:  # not the host's doing (e.g. an unreadable key file)
                pool.release(target)
                raise
            err = sent.error
            if isinstance(err, AuthError) and target not in reloaded:
                reloaded.add(target)
                if self._reload(target, token_kind, sent.token):
                    # The same host with the re-read key, no retry spent. The refusal came from
                    # the frontend and says nothing about the model: a host being probed (a
                    # restarted server has a new key) stays out until the retry answers.
                    pool.report(target, sent.attempt, settled=False)
                    continue
            change = pool.report(target, sent.attempt)
            if change == "down":
                log.warning("seqrec: %s out of rotation for now: %s", target.url, sent.error)
            elif change == "up":
                log.info("seqrec: %s answers again, back in rotation", target.url)
            if sent.response is not None:
                return sent.response, target
            assert err is not None
            # A read timeout is not retried (the server may still be computing it), except from
            # a host that is out of the rotation, e.g. a probe queued behind workers still loading.
            retry = sent.retry or (sent.attempt is Attempt.NO_ANSWER and pool.is_down(target))
            if not retry or attempt >= max_retries:
                raise err from sent.cause
            tried.add(target)
            target = host or pool.pick(avoid=tried)
            self._count("retries")
            if target in tried:  # no fresh host left: give a tried one time to recover
                delay = self.policy.delay(attempt)
                log.debug("seqrec: attempt %d failed (%s), retrying %s in %.3fs",
                          attempt + 1, type(sent.cause).__name__, target.url, delay)
                _sleep(delay)
            else:
                self._count("failovers")
                log.debug("seqrec: attempt %d failed (%s), failing over to %s",
                          attempt + 1, type(sent.cause).__name__, target.url)
            attempt += 1

    def _reload(self, host: Host, kind: str, refused: Optional[str]) -> bool:
        """After ``host`` refused the key: True when a different one is now available."""
        try:
            fresh = host.tokens.reload(kind, refused)
        except AuthError as read_error:
            log.warning("seqrec: key refused and %s", read_error)
            return False
        if fresh:
            self._count("token_reloads")
            log.info("seqrec: key refused by %s, retrying with the re-read key", host.url)
        return fresh

    def _send(self, method: str, host: Host, path: str, json_body: Any, token_kind: str,
              request_id: str) -> _Sent:
        """One HTTP attempt, classified; raises only for what is no server's doing."""
        url = host.url + path
        token = host.tokens.get(token_kind)
        headers = {"X-Request-ID": request_id}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        no_answer = f"no answer within {self.timeout}s"
        try:
            resp = self.session.request(
                method, url, json=json_body, headers=headers, timeout=self.timeout
            )
            resp.raise_for_status()
            return _Sent(Attempt.OK, token, response=resp)
        except requests.HTTPError as e:
            rid = resp.headers.get("x-request-id") or request_id
            err = error_for_status(resp.status_code, resp.text, url=url, request_id=rid)
            if retryable(err):
                return _Sent(Attempt.DOWN, token, error=err, cause=e, retry=True)
            seen = Attempt.ERROR if resp.status_code >= 500 else Attempt.REJECTED
            return _Sent(seen, token, error=err, cause=e)
        except requests.ConnectTimeout as e:  # before ConnectionError: it is both
            err = Timeout(f"connect timeout: {e}", url=url, request_id=request_id)
            return _Sent(Attempt.DOWN, token, error=err, cause=e, retry=True)
        except requests.ReadTimeout as e:
            return _Sent(Attempt.NO_ANSWER, token, cause=e,
                         error=Timeout(no_answer, url=url, request_id=request_id))
        except requests.exceptions.SSLError as e:  # configuration, not a blip
            return _Sent(Attempt.NO_ANSWER, token, cause=e,
                         error=ConnectionFailed(f"TLS error: {e}", url=url, request_id=request_id))
        except requests.ConnectionError as e:
            if any(isinstance(a, ReadTimeoutError) for a in e.args):  # timed out mid-body
                return _Sent(Attempt.NO_ANSWER, token, cause=e,
                             error=Timeout(no_answer, url=url, request_id=request_id))
            err = ConnectionFailed(f"cannot reach the server: {e}", url=url, request_id=request_id)
            return _Sent(Attempt.DOWN, token, error=err, cause=e, retry=True)
        except requests.exceptions.ChunkedEncodingError as e:  # the server went away mid-answer
            err = ConnectionFailed(f"connection lost mid-answer: {e}", url=url,
                                   request_id=request_id)
            return _Sent(Attempt.DOWN, token, error=err, cause=e, retry=True)
        except requests.RequestException as e:
            return _Sent(Attempt.NO_ANSWER, token, cause=e,
                         error=SeqrecError(f"request failed: {e}", url=url, request_id=request_id))
