"""Errors raised by the seqrec SDK: one base class, one subclass per case.

Every error carries what an on-call engineer needs to find the request again: the HTTP status
(None when no answer came back), the URL, the response body and the request id. The SDK always
raises them ``from`` the underlying ``requests`` exception, so the original cause stays in the
traceback.

    try:
        recs = client.recommend(history, user_id=uid)
    except seqrec_sdk.BadRequest as e:     # our bug: fix the request, do not retry
        log.error("seqrec refused %s: %s", e.request_id, e.message)
    except seqrec_sdk.SeqrecError:         # anything else from the SDK
        ...
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Type

__all__ = [
    "SeqrecError",
    "BadRequest",
    "AuthError",
    "ModelNotFound",
    "Overloaded",
    "ServerError",
    "Timeout",
    "ConnectionFailed",
    "error_for_status",
]

# TorchServe answers a wrong or expired token with 400 (not 401) and this exception type.
INVALID_KEY_TYPE = "InvalidKeyException"


class SeqrecError(Exception):
    """Base class of every error the SDK raises."""

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        url: Optional[str] = None,
        body: Optional[str] = None,
        request_id: Optional[str] = None,
        error_type: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.url = url
        self.body = body
        self.request_id = request_id
        self.error_type = error_type  # the server's "type" field, e.g. "BadRequest"

    def __str__(self) -> str:
        parts = [self.message]
        context = " ".join(str(x) for x in (self.status, self.url) if x is not None)
        if context:
            parts.append(f"[{context}]")
        if self.request_id:
            parts.append(f"(request_id={self.request_id})")
        return " ".join(parts)

    def __reduce__(self):  # keep the keyword fields when pickled (e.g. across processes)
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: Type[SeqrecError], message: str, state: Dict[str, Any]) -> SeqrecError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class BadRequest(SeqrecError):
    """400 (or 413): the request is wrong. Retrying will not help; ``message`` says what."""


class AuthError(SeqrecError):
    """The token was refused (TorchServe: 400 InvalidKeyException; or 401/403 from a proxy),
    also after the token file was read again; or no usable token could be read."""


class ModelNotFound(SeqrecError):
    """404: the model, or the requested model version, is not registered on the server."""


class Overloaded(SeqrecError):
    """503 (or 429): no worker could take the request, still so after the retries."""


class ServerError(SeqrecError):
    """Another 5xx answer: the handler failed (500) or ran out of memory (507)."""


class Timeout(SeqrecError):
    """No answer in time: the client's timeout, 408 or 504."""


class ConnectionFailed(SeqrecError):
    """The server could not be reached or dropped the connection, still so after the retries."""


def parse_error_body(text: str) -> Dict[str, Any]:
    """TorchServe and the seqrec handler answer errors as {"code", "type", "message"}."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def is_invalid_key(status: int, body: Dict[str, Any], text: str) -> bool:
    if status in (401, 403):
        return True
    return status == 400 and (body.get("type") == INVALID_KEY_TYPE or INVALID_KEY_TYPE in text)


_STATUS_CLASSES: Dict[int, Type[SeqrecError]] = {
    400: BadRequest,
    401: AuthError,
    403: AuthError,
    404: ModelNotFound,
    408: Timeout,
    413: BadRequest,
    429: Overloaded,
    503: Overloaded,
    504: Timeout,
}


def error_for_status(
    status: int, text: str, *, url: str, request_id: Optional[str] = None
) -> SeqrecError:
    """Build the error for a non-2xx answer (status -> class map, as hvac's ``from_status``)."""
    body = parse_error_body(text)
    if is_invalid_key(status, body, text):
        cls: Type[SeqrecError] = AuthError
    else:
        cls = _STATUS_CLASSES.get(status) or (ServerError if status >= 500 else SeqrecError)
    message = body.get("message") if isinstance(body.get("message"), str) else None
    if not message:
        message = text.strip()[:500] or f"HTTP {status}"
    error_type = body.get("type") if isinstance(body.get("type"), str) else None
    return cls(message, status=status, url=url, body=text, request_id=request_id,
               error_type=error_type)
