"""The SDK's values: frozen dataclasses in, frozen dataclasses out.

A history is a sequence of plain item ids (``int`` or ``str``, as in training) or of
:class:`Event`; the server answers :class:`Recommendations`.
"""

from __future__ import annotations

import datetime as _dt
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "ItemId",
    "Event",
    "HistoryItem",
    "RecommendRequest",
    "ScoredItem",
    "Recommendations",
    "Variant",
    "Exposure",
    "Outcome",
    "ModelVersion",
    "HostStats",
    "ClientStats",
]

ItemId = Union[int, str]
Timestamp = Union[int, float, _dt.datetime]


def unix_seconds(value: Optional[Timestamp]) -> Optional[float]:
    """datetime -> unix seconds (naive datetimes are taken as UTC); numbers pass through."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return value  # type: ignore[return-value]
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.timestamp()
    raise TypeError(f"timestamp must be unix seconds or a datetime, got {type(value).__name__}")


@dataclass(frozen=True)
class Event:
    """One interaction of the user, oldest first in a history."""

    item_id: ItemId
    timestamp: Optional[Timestamp] = None
    event_type: Optional[str] = None  # e.g. "view", "cart", "purchase"
    source: Optional[str] = None  # e.g. "search", "feed"
    strength: Optional[float] = None  # interaction strength, e.g. a rating

    def __post_init__(self) -> None:
        # JSON has no NaN or infinity: fail here, not as a 400 after a round trip.
        if self.strength is None:
            return
        ok = isinstance(self.strength, numbers.Real) and not isinstance(self.strength, bool)
        try:  # numpy scalars are Real too; 10**400 overflows a float
            ok = ok and math.isfinite(float(self.strength))
        except OverflowError:
            ok = False
        if not ok:
            raise ValueError(f"Event.strength must be a finite number, got {self.strength!r}")

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"item_id": self.item_id}
        if self.timestamp is not None:
            out["timestamp"] = unix_seconds(self.timestamp)
        if self.event_type is not None:
            out["event_type"] = self.event_type
        if self.source is not None:
            out["source"] = self.source
        if self.strength is not None:
            out["strength"] = float(self.strength)
        return out


HistoryItem = Union[int, str, Event]


@dataclass(frozen=True)
class RecommendRequest:
    """The arguments of one :meth:`Client.recommend` call, for :meth:`Client.recommend_many`."""

    history: Sequence[HistoryItem]
    k: int = 10
    user_id: Optional[str] = None
    exclude: Optional[Sequence[ItemId]] = None
    candidates: Optional[Sequence[ItemId]] = None
    exclude_seen: bool = True
    now: Optional[Timestamp] = None
    version: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.history, (str, bytes)) or not isinstance(self.history, Sequence):
            raise TypeError("history must be a list of item ids or Events, oldest first")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be a positive int, got {self.k!r}")

    def body(self) -> Dict[str, Any]:
        """The JSON body of the HTTP contract; optional fields only when set (the server
        refuses unknown fields, and sends defaults for missing ones)."""
        history = list(self.history)
        if any(isinstance(h, Event) for h in history):
            # one shape per list: plain ids become {"item_id": id} next to events
            history = [h.to_json() if isinstance(h, Event) else {"item_id": h} for h in history]
        out: Dict[str, Any] = {"history": history, "k": self.k, "exclude_seen": self.exclude_seen}
        if self.exclude is not None:
            out["exclude"] = list(self.exclude)
        if self.candidates is not None:
            out["candidates"] = list(self.candidates)
        if self.user_id is not None:
            out["user_id"] = str(self.user_id)
        if self.now is not None:
            out["now"] = unix_seconds(self.now)
        return out

    def history_ids(self) -> Tuple[ItemId, ...]:
        return tuple(h.item_id if isinstance(h, Event) else h for h in self.history)


@dataclass(frozen=True)
class ScoredItem:
    item_id: ItemId
    score: float


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment, served by ``/predictions/<model>/<model_version>``.

    ``weight`` is the share of covered users; leave every weight None for equal shares.
    ``key`` is the variation id a warehouse joins on (GrowthBook's ``meta[i].key``); None means
    the variant's position, "0", "1", ..., as GrowthBook does without meta."""

    name: str
    model_version: str
    weight: Optional[float] = None
    key: Optional[str] = None


@dataclass(frozen=True)
class Recommendations:
    """One served answer.

    ``fallback`` is True when the server could not answer (timeout, unreachable, 5xx after the
    retries) and the client's fallback produced ``items``; ``fallback_reason`` says why.
    ``server_fallback`` is the server's own flag (e.g. "popular" for an empty or all-unknown
    history): the model did answer, with popular items. ``recommendation_id`` is unique per
    answer; log it with clicks to attribute them."""

    items: Tuple[ScoredItem, ...]
    model: str
    model_version: Optional[str]
    recommendation_id: str
    variant: Optional[str] = None
    experiment: Optional[str] = None
    fallback: bool = False
    fallback_reason: Optional[str] = None
    latency_ms: float = 0.0
    unknown_items: Tuple[ItemId, ...] = ()
    server_fallback: Optional[str] = None
    host: Optional[str] = None  # the base URL that answered; None for a client fallback

    @property
    def item_ids(self) -> Tuple[ItemId, ...]:
        return tuple(i.item_id for i in self.items)


@dataclass(frozen=True)
class Exposure:
    """One served recommendation list to a user in an experiment: what ``on_exposure`` gets.

    The warehouse record of the test (see README, "Exposures and outcomes"): ``variant`` is the
    variation's name, ``variation_id`` its id (GrowthBook's variation key), ``timestamp`` unix
    seconds (UTC), ``fallback`` True when the client's fallback list was shown instead of the
    model's. Clicks and conversions join on ``recommendation_id`` (:class:`Outcome`)."""

    experiment_key: str
    variant: str
    user_id: str
    model_version: Optional[str]
    recommendation_id: str
    item_ids: Tuple[ItemId, ...]
    timestamp: float
    fallback: bool = False
    variation_id: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {
            "experiment_key": self.experiment_key,
            "variation_id": self.variation_id,
            "variant": self.variant,
            "user_id": self.user_id,
            "model_version": self.model_version,
            "recommendation_id": self.recommendation_id,
            "item_ids": list(self.item_ids),
            "timestamp": self.timestamp,
            "fallback": self.fallback,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Exposure":
        """The inverse of :meth:`to_dict` (e.g. a JSON line read back)."""
        vid = d.get("variation_id")
        return cls(
            experiment_key=str(d["experiment_key"]),
            variant=str(d["variant"]),
            user_id=str(d["user_id"]),
            model_version=d.get("model_version"),
            recommendation_id=str(d["recommendation_id"]),
            item_ids=tuple(d.get("item_ids") or ()),
            timestamp=float(d["timestamp"]),
            fallback=bool(d.get("fallback", False)),
            variation_id=None if vid is None else str(vid),
        )


OUTCOME_KINDS = ("click", "convert")


@dataclass(frozen=True)
class Outcome:
    """What a user did with a recommended item, keyed by the list's ``recommendation_id``:
    ``kind`` "click" or "convert" (e.g. a purchase or a message to the seller); ``value`` an
    optional amount (e.g. the price); ``timestamp`` unix seconds (UTC)."""

    recommendation_id: str
    item_id: ItemId
    kind: str = "click"
    timestamp: Optional[float] = None
    user_id: Optional[str] = None
    value: Optional[float] = None

    def __post_init__(self) -> None:
        if self.kind not in OUTCOME_KINDS:
            raise ValueError(f"Outcome.kind must be one of {OUTCOME_KINDS}, got {self.kind!r}")
        if not isinstance(self.recommendation_id, str) or not self.recommendation_id:
            raise ValueError("Outcome.recommendation_id must be a non-empty string")

    def to_dict(self) -> Dict[str, Any]:
        return {
            "recommendation_id": self.recommendation_id,
            "item_id": self.item_id,
            "kind": self.kind,
            "timestamp": self.timestamp,
            "user_id": self.user_id,
            "value": self.value,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Outcome":
        ts, value, user = d.get("timestamp"), d.get("value"), d.get("user_id")
        return cls(
            recommendation_id=str(d["recommendation_id"]),
            item_id=d["item_id"],
            kind=str(d.get("kind", "click")),
            timestamp=None if ts is None else float(ts),
            user_id=None if user is None else str(user),
            value=None if value is None else float(value),
        )


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, from TorchServe's management API."""

    version: str
    ready_workers: int
    workers: int
    batch_size: Optional[int] = None
    max_batch_delay_ms: Optional[int] = None
    url: Optional[str] = None

    @property
    def ready(self) -> bool:
        return self.ready_workers > 0


@dataclass(frozen=True)
class HostStats:
    """One host's counters (``ClientStats.hosts[base_url]``): HTTP attempts sent to it, 2xx
    answers, failures (connection errors, timeouts, 5xx), times it was taken out of rotation,
    and whether it is out now (cooling down or waiting for its probe)."""

    requests: int = 0
    ok: int = 0
    failures: int = 0
    marked_down: int = 0
    down: bool = False


@dataclass(frozen=True)
class ClientStats:
    """Counters since the client was created (a snapshot; see ``Client.stats``)."""

    requests: int = 0  # recommend() calls
    ok: int = 0  # answered by the server
    errors: int = 0  # raised to the caller
    retries: int = 0  # extra HTTP attempts: connection error, 503/504, "Worker died."
    failovers: int = 0  # those of the retries that went to another host
    fallbacks: int = 0
    fallback_reasons: Mapping[str, int] = field(default_factory=dict)
    token_reloads: int = 0  # token file re-read after the server refused the key
    exposures: int = 0
    exposure_errors: int = 0  # on_exposure raised (logged, never propagated)
    hosts: Mapping[str, HostStats] = field(default_factory=dict)  # by base URL
