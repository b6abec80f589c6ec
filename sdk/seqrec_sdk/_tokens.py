"""Where the SDK's keys come from. Private: use ``Client(token=..., token_file=...)``.

An explicit token, else TorchServe's key_file.json, else $SEQREC_TOKEN, else $SEQREC_TOKEN_FILE;
a key file is re-read once when the server refuses its key (a rotation, a restarted server).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Dict, Optional, Tuple

from .errors import AuthError

TOKEN_ENV = "SEQREC_TOKEN"
TOKEN_FILE_ENV = "SEQREC_TOKEN_FILE"
MANAGEMENT_TOKEN_ENV = "SEQREC_MANAGEMENT_TOKEN"
# How long a refused key's file is re-read while it still holds that key, or is half written.
SETTLE_S = 1.0


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
        # kind -> (the refused key, the file's stat) after a re-read that found nothing new
        self._settled: Dict[str, Tuple[Optional[str], Optional[Tuple[int, int]]]] = {}
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
        (re-read from the file, or already re-read by another thread).

        TorchServe's token API swaps the key in memory first and then rewrites the file in place
        (truncate, write): for a moment the file still holds the refused key, or is empty or half
        written. So the file is re-read for up to ``SETTLE_S`` while it looks like that; a file
        that stayed as it was through one such wait is not waited on again until it changes
        (a key that really expired then costs no wait per call)."""
        if self.token_file is None or (kind == "management" and self._explicit_management):
            return False
        with self._lock:
            if self._keys[kind] != refused:
                return True
            stat = _stat(self.token_file)
            if stat is not None and self._settled.get(kind) == (refused, stat):
                return False
            deadline = time.monotonic() + SETTLE_S
            pause = 0.01
            while True:
                try:
                    fresh: Optional[str] = read_key_file(self.token_file, kind)
                except AuthError:
                    if time.monotonic() >= deadline:
                        raise
                    fresh = None
                if fresh is not None and fresh != refused:
                    self._keys[kind] = fresh
                    self._settled.pop(kind, None)
                    return True
                if time.monotonic() >= deadline:
                    self._settled[kind] = (refused, _stat(self.token_file))
                    return False
                time.sleep(pause)
                pause = min(2 * pause, 0.2)


def _stat(path: str) -> Optional[Tuple[int, int]]:
    """(mtime in ns, size): whether the file changed since it was last read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
