"""HTTP plumbing: one session, one retry loop, tokens. Private: use :class:`seqrec_sdk.Client`.

Retries happen here and nowhere else (urllib3's own retries are off), only where a repeat is
safe and useful: connection errors (refused, reset, connect timeout), 503/504, and TorchServe's
"Worker died." answer (500 or 507, see :func:`worker_died`): the batch a killed worker held,
which another or the restarted worker answers. Never on 400, never on another 500 (the handler's
own per-request error is deterministic: a repeat would only triple its latency), never on a read
timeout (the server may still be working on it; retrying would double the load exactly when it is
slow). Predictions are read-only, so a repeat is always safe; these rules only decide where it helps.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError

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
TOKEN_ENV = "SEQREC_TOKEN"
TOKEN_FILE_ENV = "SEQREC_TOKEN_FILE"
MANAGEMENT_TOKEN_ENV = "SEQREC_MANAGEMENT_TOKEN"

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


def read_key_file(path: str, kind: str) -> str:
    """The ``kind`` ("inference" or "management") key from TorchServe's key_file.json:
    {"management": {"key", "expiration time"}, "inference": {...}, "API": {"key"}}."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        key = data[kind]["key"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AuthError(f"cannot read the {kind} key from {path}: {e}") from e
    if not isinstance(key, str) or not key:
        raise AuthError(f"empty {kind} key in {path}")
    return key


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


class TokenSource:
    """Where the keys come from: an explicit token, else ``token_file`` (TorchServe's
    key_file.json), else $SEQREC_TOKEN, else $SEQREC_TOKEN_FILE; none at all means the server
    runs without token authorization. Only a file can be re-read after a refusal."""

    def __init__(
        self,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        management_token: Optional[str] = None,
    ) -> None:
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        if token is None and token_file is None:
            token = os.environ.get(TOKEN_ENV) or None
            if token is None:
                token_file = os.environ.get(TOKEN_FILE_ENV) or None
        self.token_file = os.fspath(token_file) if token_file is not None else None
        self._lock = threading.Lock()
        self._keys: Dict[str, Optional[str]] = {"inference": token, "management": None}
        self._explicit_management = management_token or os.environ.get(MANAGEMENT_TOKEN_ENV)
        self._keys["management"] = self._explicit_management
        if self.token_file is not None:  # fail at construction on a wrong path, not per request
            self._keys["inference"] = read_key_file(self.token_file, "inference")

    def get(self, kind: str) -> Optional[str]:
        if kind == "management" and self._keys["management"] is None and self.token_file:
            with self._lock:
                if self._keys["management"] is None:
                    self._keys["management"] = read_key_file(self.token_file, "management")
        return self._keys[kind]

    def reload(self, kind: str, refused: Optional[str]) -> bool:
        """After the server refused ``refused``: True when a different key is now available
        (re-read from the file, or already re-read by another thread)."""
        if self.token_file is None or (kind == "management" and self._explicit_management):
            return False
        with self._lock:
            if self._keys[kind] != refused:
                return True
            fresh = read_key_file(self.token_file, kind)
            if fresh == refused:
                return False
            self._keys[kind] = fresh
            return True


class Transport:
    """Sends one logical request, with the retry loop and the token re-read."""

    def __init__(
        self,
        *,
        session: Optional[requests.Session],
        pool_size: int,
        timeout: TimeoutArg,
        policy: RetryPolicy,
        tokens: TokenSource,
        on_retry: Callable[[], None],
        on_token_reload: Callable[[], None],
    ) -> None:
        self.owns_session = session is None
        if session is None:
            session = requests.Session()
            # max_retries=0: this class is the only retry loop
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session
        self.timeout = timeout
        self.policy = policy
        self.tokens = tokens
        self._on_retry = on_retry
        self._on_token_reload = on_token_reload

    def close(self) -> None:
        if self.owns_session:
            self.session.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        token_kind: str = "inference",
        retries: Optional[int] = None,
    ) -> requests.Response:
        """The 2xx response, or raise the matching :class:`SeqrecError` (``from`` the cause)."""
        max_retries = self.policy.retries if retries is None else retries
        request_id = uuid.uuid4().hex
        attempt = 0
        reloaded = False
        while True:
            token = self.tokens.get(token_kind)
            headers = {"X-Request-ID": request_id}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            try:
                resp = self.session.request(
                    method, url, json=json_body, headers=headers, timeout=self.timeout
                )
                resp.raise_for_status()
                return resp
            except requests.HTTPError as e:
                rid = resp.headers.get("x-request-id") or request_id
                err = error_for_status(resp.status_code, resp.text, url=url, request_id=rid)
                if isinstance(err, AuthError) and not reloaded:
                    reloaded = True
                    try:
                        fresh = self.tokens.reload(token_kind, token)
                    except AuthError as read_error:
                        log.warning("seqrec: key refused and %s", read_error)
                        raise err from e
                    if fresh:
                        self._on_token_reload()
                        log.info("seqrec: key refused by %s, retrying with the re-read key", url)
                        continue
                if not retryable(err) or attempt >= max_retries:
                    raise err from e
                cause: Exception = err
            except requests.ConnectTimeout as e:  # before ConnectionError: it is both
                if attempt >= max_retries:
                    raise Timeout(f"connect timeout: {e}", url=url, request_id=request_id) from e
                cause = e
            except requests.ReadTimeout as e:
                raise Timeout(f"no answer within {self.timeout}s", url=url,
                              request_id=request_id) from e
            except requests.exceptions.SSLError as e:  # configuration, not a blip
                raise ConnectionFailed(f"TLS error: {e}", url=url, request_id=request_id) from e
            except requests.ConnectionError as e:
                if any(isinstance(a, ReadTimeoutError) for a in e.args):  # timed out mid-body
                    raise Timeout(f"no answer within {self.timeout}s", url=url,
                                  request_id=request_id) from e
                if attempt >= max_retries:
                    raise ConnectionFailed(f"cannot reach the server: {e}", url=url,
                                           request_id=request_id) from e
                cause = e
            except requests.RequestException as e:
                raise SeqrecError(f"request failed: {e}", url=url, request_id=request_id) from e
            delay = self.policy.delay(attempt)
            log.debug("seqrec: attempt %d to %s failed (%s), retrying in %.3fs",
                      attempt + 1, url, type(cause).__name__, delay)
            self._on_retry()
            _sleep(delay)
            attempt += 1
