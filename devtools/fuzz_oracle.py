"""The oracle of the request fuzzer: what the seqrec server must answer to each case.

    from devtools.fuzz_oracle import Catalog, check_answer
    cat = Catalog.from_export("artifacts/demo")
    problem = check_answer(case, status, body, cat)    # None, or what is wrong

A `FuzzCase` (built by devtools/fuzz_requests.py) carries the bytes as sent and what must happen:
a valid request a 200 that obeys the contract (docs/http-api.md), a bad one a 400 BadRequest whose
message names the problem (`fragments`: at least one must appear), a body over TorchServe's
max_request_size a 413. The oracle reads the export on its own (items.parquet), independently of the
handler's code, so the two can disagree.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

MAX_IDS, MAX_K = 10_000, 1000
FIELDS = ("history", "k", "exclude_seen", "exclude", "candidates", "user_id", "now")
_INT_RE = re.compile(r"-?[0-9]{1,19}")
_INT64 = (-(2 ** 63), 2 ** 63 - 1)
JSON = "application/json"

@dataclass(frozen=True)
class FuzzCase:
    kind: str                        # "valid/<what>" or "bad/<what>"; the generator that made it
    data: bytes                      # the body, byte for byte as sent
    content_type: str = JSON
    status: int = 200                # what the server must answer
    fragments: Tuple[str, ...] = ()  # for a 400: one of these must be in the message
    request: Optional[dict] = None   # for a 200: the request as the server decodes it
    http_only: bool = False          # only meaningful through TorchServe's frontend (forms, size)
    query: str = ""                  # a query string to add to the URL (HTTP only)

    @property
    def valid(self) -> bool:
        return self.status == 200


@dataclass
class Catalog:
    """What the oracle needs to know of the served export: ids, availability, popularity."""
    ids: List[Any]                   # raw item ids, index order (item index = position + 1)
    available: List[bool]
    popularity: List[int]
    id_type: str                     # "int" or "str"
    model_version: str = "1.0"
    index: Dict[Any, int] = field(default_factory=dict)

    def __post_init__(self):
        self.index = {x: i + 1 for i, x in enumerate(self.ids)}
        self.avail = {i + 1 for i, a in enumerate(self.available) if a}  # item indices
        # available items, most popular first, ties by index: the contract's popular fallback
        self.popular_order = sorted(self.avail, key=lambda i: (-self.popularity[i - 1], i))

    @classmethod
    def from_export(cls, export_dir) -> "Catalog":
        import pandas as pd  # the oracle reads the export; generation itself needs nothing
        d = Path(export_dir)
        meta = json.loads((d / "metadata.json").read_text())
        items = pd.read_parquet(d / "items.parquet", columns=["item_id", "popularity", "available"])
        return cls(items["item_id"].tolist(), items["available"].astype(bool).tolist(),
                   items["popularity"].astype(int).tolist(), meta.get("item_id_type", "int"),
                   str(meta.get("model_version", "")))

    def known(self, raw: Any) -> int:
        """Item index of a raw id as the contract matches it (0 = unknown)."""
        if self.id_type == "int":
            if isinstance(raw, str):
                if not _INT_RE.fullmatch(raw):
                    return 0
                raw = int(raw)
            if not _INT64[0] <= raw <= _INT64[1]:
                return 0
            return self.index.get(raw, 0)
        return self.index.get(raw if isinstance(raw, str) else str(raw), 0)


# ---- the oracle
def worker_input(case: FuzzCase) -> Any:
    """What TorchServe 0.12's Python worker hands the handler for this body (ts/protocol/
    otf_message_handler.py): application/json decoded by json.loads (NaN accepted), else the bytes
    on failure; text/* decoded to str; anything else bytes."""
    if case.content_type == JSON:
        try:
            return json.loads(case.data.decode("utf-8"))
        except Exception:  # noqa: BLE001 -- the worker forwards the bytes, whatever went wrong
            return case.data
    if case.content_type.startswith("text"):
        try:
            return case.data.decode("utf-8")
        except UnicodeDecodeError:
            return case.data
    return case.data


def check_answer(case: FuzzCase, status: int, body: Any, cat: Catalog) -> Optional[str]:
    """None if (status, parsed JSON body) is what the contract demands for this case, else why not."""
    if status != case.status:
        return f"status {status}, expected {case.status}: {str(body)[:300]}"
    if case.status == 413:
        return None
    if not isinstance(body, dict):
        return f"body is not a JSON object: {str(body)[:300]}"
    if case.status == 400:
        msg = body.get("message")
        if body.get("type") != "BadRequest" or body.get("code") != 400 or not isinstance(msg, str):
            return f"not a BadRequest error body: {body}"
        if not any(f in msg for f in case.fragments):
            return f"message {msg[:200]!r} names none of {case.fragments}"
        if len(msg) > 2000 or "Traceback" in msg:
            return f"message is not a clear one-liner: {msg[:300]!r}"
        return None
    return _check_ok(case.request, body, cat)


def _check_ok(req: dict, body: dict, cat: Catalog) -> Optional[str]:
    want_keys = {"items", "model", "model_version", "unknown_items", "fallback"}
    if set(body) != want_keys:
        return f"keys {sorted(body)}"
    if body["model_version"] != cat.model_version:
        return f"model_version {body['model_version']!r}"
    k = req.get("k")
    k = 10 if k is None else k
    exclude_seen = req.get("exclude_seen")
    exclude_seen = True if exclude_seen is None else exclude_seen
    history = [e["item_id"] if isinstance(e, dict) else e for e in req["history"]]
    known_hist = [cat.known(x) for x in history]
    unknown, seen = [], set()
    for raw, idx in zip(history, known_hist):
        if not idx and (type(raw), raw) not in seen:
            seen.add((type(raw), raw))
            unknown.append(raw)
    if body["unknown_items"] != unknown:
        return f"unknown_items {str(body['unknown_items'])[:200]} != {str(unknown)[:200]}"
    banned = {i for i in known_hist if i} if exclude_seen else set()
    banned |= {cat.known(x) for x in (req.get("exclude") or [])}
    banned.discard(0)
    allowed = None if req.get("candidates") is None else {cat.known(x) for x in req["candidates"]} - {0}
    if allowed is None:
        n_qualifying = len(cat.avail) - len(banned & cat.avail)
    else:
        allowed = (allowed & cat.avail) - banned
        n_qualifying = len(allowed)

    def qualifies(i):
        return i in cat.avail and i not in banned and (allowed is None or i in allowed)

    items = body["items"]
    got = [cat.known(it["item_id"]) for it in items]
    if len(items) != min(k, n_qualifying):
        return f"{len(items)} items, expected min(k={k}, {n_qualifying} qualifying)"
    if len(set(got)) != len(got) or not all(qualifies(i) for i in got):
        return f"items outside the qualifying set (unavailable, seen, excluded or not a candidate): {got[:20]}"
    if any(type(it["item_id"]) is not type(cat.ids[0]) for it in items):
        return "item ids not in the catalogue's type"
    scores = [it["score"] for it in items]
    if not all(isinstance(s, float) and math.isfinite(s) for s in scores):
        return f"non-finite scores {scores[:10]}"
    if any(known_hist):
        if body["fallback"] is not None:
            return f"fallback {body['fallback']!r} for a history with known items"
        if not all(-1 <= s <= 1 for s in scores) or any(a < b - 1e-6 for a, b in zip(scores, scores[1:])):
            return f"model scores not in (-1, 1) best first: {scores[:10]}"
    else:
        if body["fallback"] != "popular":
            return f"fallback {body['fallback']!r} for an empty or all-unknown history"
        order = cat.popular_order if allowed is None else sorted(allowed, key=lambda i: (-cat.popularity[i - 1], i))
        want = []
        for i in order:
            if len(want) == k:
                break
            if qualifies(i):
                want.append(i)
        if got != want:
            return f"popular fallback {got[:10]} != {want[:10]}"
    return None


def same_ranking(a: dict, b: dict, tol: float = 1e-5) -> Optional[str]:
    """None if two 200 answers rank alike: equal scores (within tol) and equal ids wherever the
    score is not tied with a neighbour (batching may reorder exact ties)."""
    sa, sb = [x["score"] for x in a["items"]], [x["score"] for x in b["items"]]
    if len(sa) != len(sb) or any(abs(x - y) > tol for x, y in zip(sa, sb)):
        return f"scores differ: {sa[:5]} vs {sb[:5]}"
    for j, (x, y) in enumerate(zip(a["items"], b["items"])):
        tied = (j > 0 and abs(sa[j] - sa[j - 1]) <= tol) or (j + 1 < len(sa) and abs(sa[j] - sa[j + 1]) <= tol)
        if not tied and x["item_id"] != y["item_id"]:
            return f"item {j} differs: {x} vs {y}"
    if {k: v for k, v in a.items() if k != "items"} != {k: v for k, v in b.items() if k != "items"}:
        return "fields other than items differ"
    return None
