"""The HTTP request contract (docs/http-api.md): parse and validate one request body, strictly.

    req = parse_request(body)        # body: dict, or str/bytes holding JSON; raises BadRequest
    ids = normalise_ids(req.history, "int")   # ints, "12" -> 12, anything else -> None (unknown)

Pure Python, no torch: every rule of the contract lives here, so it can be read in one place and
tested without a model. Messages say what is wrong and where (`history[3].timestamp ...`).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, List, Optional

MAX_IDS = 10_000  # per list: history, exclude, candidates
MAX_K = 1000
DEFAULT_K = 10
FIELDS = ("history", "k", "exclude_seen", "exclude", "candidates", "user_id", "now")
EVENT_FIELDS = ("item_id", "timestamp", "event_type", "source", "strength")
_INT_RE = re.compile(r"-?[0-9]{1,19}")
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


class BadRequest(ValueError):
    """A request that breaks the contract: answered 400 with this message."""


@dataclass(frozen=True)
class Request:
    history: List[Any]            # raw ids as sent (int or str), oldest first
    timestamps: List[float]       # per event; NaN when not given
    event_types: List[str]        # per event; "" when not given
    sources: List[str]            # per event; "" when not given
    strengths: List[float]        # per event; NaN when not given
    k: int = DEFAULT_K
    exclude_seen: bool = True
    exclude: tuple = ()
    candidates: Optional[list] = None   # None: rank the whole catalogue
    user_id: Any = None
    now: Optional[float] = None         # None: the server's clock


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_body(body: Any) -> dict:
    """TorchServe hands over application/json already decoded; other content types (or JSON it
    failed to decode) arrive as str/bytes, which are parsed here with NaN/Infinity refused."""
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRequest(f"body is not UTF-8: {e}") from None
    if isinstance(body, str):
        if not body.strip():
            raise BadRequest("body is empty; send a JSON object")
        try:
            body = json.loads(body, parse_constant=_reject_constant)
        except ValueError as e:
            raise BadRequest(f"body is not valid JSON: {e}") from None
        except RecursionError:
            raise BadRequest("body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object, got {_json_type(body)}")
    return body


def parse_request(body: Any) -> Request:
    d = parse_body(body)
    unknown = sorted(set(d) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; allowed: {list(FIELDS)}")
    if "history" not in d or d["history"] is None:
        raise BadRequest("field 'history' is required (a list of item ids or events, may be empty)")

    history, timestamps, event_types, sources, strengths = _parse_history(d["history"])
    k = _opt(d, "k", DEFAULT_K)
    if not _is_int(k) or not 1 <= k <= MAX_K:
        raise BadRequest(f"k must be an integer in 1..{MAX_K}, got {_show(k)}")
    exclude_seen = _opt(d, "exclude_seen", True)
    if not isinstance(exclude_seen, bool):
        raise BadRequest(f"exclude_seen must be true or false, got {_show(exclude_seen)}")
    exclude = _id_list(_opt(d, "exclude", []), "exclude")
    candidates = d.get("candidates")
    if candidates is not None:
        candidates = _id_list(candidates, "candidates")
    user_id = d.get("user_id")
    if user_id is not None and not (isinstance(user_id, str) or _is_int(user_id)):
        raise BadRequest(f"user_id must be a string or an integer, got {_show(user_id)}")
    now = d.get("now")
    if now is not None:
        now = _number(now, "now")
    return Request(history, timestamps, event_types, sources, strengths, k, exclude_seen, tuple(exclude),
                   candidates, user_id, now)


def normalise_ids(ids: List[Any], id_type: str) -> List[Any]:
    """Coerce validated ids to the index's type: for an int index "12" -> 12; for a str index
    12 -> "12". An id that cannot be of that type (or an int outside int64, or a string with a lone
    surrogate such as "\ud800", which has no UTF-8 form and so cannot be in the index) -> None."""
    out: List[Any] = []
    if id_type == "int":
        for x in ids:
            if isinstance(x, str):
                x = int(x) if _INT_RE.fullmatch(x) else None
            out.append(x if x is not None and _INT64_MIN <= x <= _INT64_MAX else None)
    else:
        for x in ids:
            x = x if isinstance(x, str) else str(x)
            out.append(x if x.isascii() or _utf8_ok(x) else None)
    return out


def _utf8_ok(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# ---- helpers
def _parse_history(h: Any):
    if not isinstance(h, list):
        raise BadRequest(f"history must be a list of item ids or event objects, got {_json_type(h)}")
    if len(h) > MAX_IDS:
        raise BadRequest(f"history has {len(h)} entries; at most {MAX_IDS}")
    ids, ts, types, srcs, strengths = [], [], [], [], []
    for i, e in enumerate(h):
        where = f"history[{i}]"
        if isinstance(e, dict):
            unknown = sorted(set(e) - set(EVENT_FIELDS))
            if unknown:
                raise BadRequest(f"{where}: unknown field(s) {unknown}; allowed: {list(EVENT_FIELDS)}")
            if "item_id" not in e:
                raise BadRequest(f"{where}: an event needs 'item_id'")
            ids.append(_id(e["item_id"], f"{where}.item_id"))
            t = e.get("timestamp")
            ts.append(math.nan if t is None else _number(t, f"{where}.timestamp"))
            s = e.get("strength")
            strengths.append(math.nan if s is None else _number(s, f"{where}.strength", "e.g. a rating"))
            types.append(_opt_str(e.get("event_type"), f"{where}.event_type"))
            srcs.append(_opt_str(e.get("source"), f"{where}.source"))
        else:
            ids.append(_id(e, where))
            ts.append(math.nan)
            types.append("")
            srcs.append("")
            strengths.append(math.nan)
    return ids, ts, types, srcs, strengths


def _id_list(v: Any, name: str) -> list:
    if not isinstance(v, list):
        raise BadRequest(f"{name} must be a list of item ids, got {_json_type(v)}")
    if len(v) > MAX_IDS:
        raise BadRequest(f"{name} has {len(v)} ids; at most {MAX_IDS}")
    return [_id(x, f"{name}[{i}]") for i, x in enumerate(v)]


def _id(x: Any, where: str):
    if isinstance(x, str) or _is_int(x):
        return x
    raise BadRequest(f"{where}: an item id must be an integer or a string, got {_show(x)}")


def _number(x: Any, where: str, meaning: str = "unix seconds") -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise BadRequest(f"{where} must be a number ({meaning}), got {_show(x)}")
    try:
        f = float(x)
    except OverflowError:
        raise BadRequest(f"{where} is out of range") from None
    if not math.isfinite(f):
        raise BadRequest(f"{where} must be a finite number, got {_show(x)}")
    return f


def _opt_str(x: Any, where: str) -> str:
    if x is None:
        return ""
    if not isinstance(x, str):
        raise BadRequest(f"{where} must be a string, got {_show(x)}")
    if not (x.isascii() or _utf8_ok(x)):
        # A lone surrogate ("\ud800", legal JSON) cannot cross into TorchScript: an unknown label.
        return x.encode("utf-8", "replace").decode("utf-8")
    return x


def _opt(d: dict, key: str, default: Any) -> Any:
    v = d.get(key)
    return default if v is None else v


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)  # JSON true is not the integer 1


def _json_type(x: Any) -> str:
    if isinstance(x, bool):
        return "a boolean"
    if x is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", int: "an integer",
            float: "a number"}.get(type(x), type(x).__name__)


def _show(x: Any) -> str:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    s = json.dumps(x) if isinstance(x, (str, int, float, bool, type(None))) else _json_type(x)
    return s if len(s) <= 40 else s[:37] + "..."
