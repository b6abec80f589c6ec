"""The typed request path of the handler: one record per request, one outcome per request.

    parsed = {i: parse_request(body) for i, body in enumerate(bodies)}   # seqrec_contract
    resolved, failed = partition(resolve(parsed, catalogue))             # one index lookup
    ...                                                                  # the handler scores
    Answer(ids, scores, unknown, fallback).body(model, version)          # -> the JSON answer

`resolve` does every id-related step once, for the whole batch: raw ids -> item indices (one
lookup), the known events with their features, the rows a request must never get, the rows it
may get (candidates), the unknown ids it reports. Scoring then only reads these records.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, TypeVar, Union

import numpy as np
import torch

if __package__:  # imported as handler.seqrec_request (tests, benchmarks, devtools)
    from .seqrec_contract import Request, normalise_ids
else:  # TorchServe: the archive's files land flat in model_dir
    from seqrec_contract import Request, normalise_ids

if TYPE_CHECKING:
    from handler.seqrec_catalogue import Catalogue

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class KnownEvents:
    """The history's events whose item is in the index, oldest first; the features travel with
    their item, so an unknown id in between can never shift them onto a neighbour."""
    items: List[int]           # item indices 1..N
    timestamps: List[float]    # NaN: not given
    event_types: List[str]     # "": not given
    sources: List[str]
    strengths: List[float]


@dataclass(frozen=True)
class Resolved:
    """One parsed request after the batch's index lookup: everything scoring needs."""
    k: int
    history: KnownEvents
    banned: torch.Tensor                 # matrix rows never returned: history (exclude_seen), exclude ids
    candidates: Optional[torch.Tensor]   # matrix rows to rank (unique, scorable, not banned); None: all
    unknown: Tuple[Any, ...]             # raw history ids not in the index, in order of first appearance
    now: float                           # the request's clock for time features


@dataclass(frozen=True)
class Answer:
    ids: List[Any]                       # raw item ids, best first
    scores: List[float]
    unknown: Tuple[Any, ...]
    fallback: Optional[str]              # "popular" when no known history could be scored

    def body(self, model: str, version: str) -> dict:
        return {"items": [{"item_id": i, "score": s} for i, s in zip(self.ids, self.scores)],
                "model": model, "model_version": version,
                "unknown_items": list(self.unknown), "fallback": self.fallback}


@dataclass(frozen=True)
class Failure:
    code: int                            # HTTP status: 400 for the client's mistake, 500 for ours
    type: str
    message: str

    @classmethod
    def bad_request(cls, message: str) -> "Failure":
        return cls(400, "BadRequest", message)

    @classmethod
    def internal(cls, error: BaseException) -> "Failure":
        return cls(500, "InternalServerError", repr(error))

    def body(self) -> dict:
        return {"code": self.code, "type": self.type, "message": self.message}


Outcome = Union[Answer, Failure]


def partition(results: Dict[int, Union[T, Failure]]) -> Tuple[Dict[int, T], Dict[int, Outcome]]:
    """Split a stage's results into the requests that go on and the ones already answered."""
    ok = {i: r for i, r in results.items() if not isinstance(r, Failure)}
    failed: Dict[int, Outcome] = {i: r for i, r in results.items() if isinstance(r, Failure)}
    return ok, failed


def resolve(requests: Dict[int, Request], catalogue: "Catalogue") -> Dict[int, Union[Resolved, Failure]]:
    """One index lookup for every id of the batch (history, exclude, candidates), split back into
    one record per request. A failure costs only the requests it touched."""
    if not requests:
        return {}
    lists = [ids for r in requests.values() for ids in (r.history, r.exclude, r.candidates or ())]
    try:
        idx = catalogue.lookup(normalise_ids([x for ids in lists for x in ids], catalogue.id_type))
    except Exception as e:  # noqa: BLE001 -- the lookup touched every request of the batch
        log.exception("seqrec: the batch's index lookup failed")
        return {i: Failure.internal(e) for i in requests}
    parts = iter(np.split(idx, np.cumsum([len(ids) for ids in lists])[:-1]))
    out: Dict[int, Union[Resolved, Failure]] = {}
    for i, r in requests.items():
        history, exclude, candidates = next(parts), next(parts), next(parts)
        try:
            out[i] = _record(r, history, exclude, candidates, catalogue)
        except Exception as e:  # noqa: BLE001
            log.exception("seqrec: resolving request %d failed", i)
            out[i] = Failure.internal(e)
    return out


def _record(r: Request, history: np.ndarray, exclude: np.ndarray, candidates: np.ndarray,
            catalogue: "Catalogue") -> Resolved:
    known = (history > 0).tolist()
    items = history[history > 0]
    events = KnownEvents(items.tolist(), _kept(r.timestamps, known), _kept(r.event_types, known),
                         _kept(r.sources, known), _kept(r.strengths, known))
    banned = _rows(catalogue, np.concatenate([items if r.exclude_seen else items[:0], exclude]))
    allowed = None
    if r.candidates is not None:
        allowed = _rows(catalogue, candidates)
        allowed = allowed[~torch.isin(allowed, banned)] if banned.numel() else allowed
    now = r.now if r.now is not None else time.time()
    return Resolved(r.k, events, banned, allowed, _unknown(r.history, known), now)


def _kept(values: list, known: List[bool]) -> list:
    return [v for v, k in zip(values, known) if k]


def _rows(catalogue: "Catalogue", idx: np.ndarray) -> torch.Tensor:
    """Item indices -> the sorted, unique matrix rows of the scorable ones."""
    idx = np.unique(idx[idx > 0])
    if not len(idx):
        return torch.empty(0, dtype=torch.long, device=catalogue.device)
    pos = catalogue.positions(torch.from_numpy(idx))
    return pos[pos >= 0]


def _unknown(raw: List[Any], known: List[bool]) -> Tuple[Any, ...]:
    seen, out = set(), []
    for x, ok in zip(raw, known):
        if not ok and (type(x), x) not in seen:  # 12 and "12" are reported apart
            seen.add((type(x), x))
            out.append(x)
    return tuple(out)
