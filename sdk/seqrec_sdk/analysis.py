"""Read an experiment from logged exposures and clicks: per-variant hit rate and CTR with
Wilson confidence intervals, no other tool needed.

    from seqrec_sdk.analysis import summarize, format_table
    stats = summarize(exposures, clicks)          # exposures: Exposure objects or their dicts
    print(format_table(stats))                    # clicks: (recommendation_id, item_id) pairs

Definitions (one exposure = one served recommendation list):
- hit rate = exposures with at least one click on a shown item / exposures;
- CTR = distinct (exposure, shown item) pairs clicked / items shown.
A click counts only when its recommendation_id was exposed and its item was in that list.
Both intervals treat their units as independent. That is right for the hit rate when each user
has a few exposures; for CTR, items of one list are correlated, so its interval is too narrow
when lists are long: trust the hit-rate interval for decisions.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple, Union

from .models import Exposure

__all__ = ["VariantStats", "wilson_interval", "summarize", "format_table"]

ExposureLike = Union[Exposure, Mapping[str, Any]]
ClickLike = Union[Tuple[str, Any], Mapping[str, Any]]


@dataclass(frozen=True)
class VariantStats:
    experiment_key: str
    variant: str
    exposures: int
    users: int
    items_shown: int
    hits: int
    clicks: int
    hit_rate: float
    hit_rate_ci: Tuple[float, float]
    ctr: float
    ctr_ci: Tuple[float, float]
    fallbacks: int  # exposures that were fallback lists (counted in, as intent-to-treat)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n == 0.
    Unlike the normal (Wald) interval it stays inside [0, 1] and is sane for 0 or n hits."""
    if n == 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _exposure_fields(e: ExposureLike) -> Tuple[str, str, str, str, Tuple[Any, ...], bool]:
    if isinstance(e, Exposure):
        return (e.experiment_key, e.variant, e.user_id, e.recommendation_id, e.item_ids,
                e.fallback)
    return (e["experiment_key"], e["variant"], str(e["user_id"]), e["recommendation_id"],
            tuple(e["item_ids"]), bool(e.get("fallback", False)))


def _click_fields(c: ClickLike) -> Tuple[str, Any]:
    if isinstance(c, Mapping):
        return c["recommendation_id"], c["item_id"]
    rec_id, item_id = c
    return rec_id, item_id


def summarize(
    exposures: Iterable[ExposureLike],
    clicks: Iterable[ClickLike],
    *,
    confidence: float = 0.95,
    include_fallbacks: bool = True,
) -> List[VariantStats]:
    """Per (experiment, variant) statistics, in order of first appearance.

    ``include_fallbacks=False`` drops exposures served by the client's fallback (a per-protocol
    reading); the default keeps them, since the user did see that list."""
    # recommendation_id -> (group, shown item ids as strings)
    shown: Dict[str, Tuple[Tuple[str, str], Set[str]]] = {}
    groups: "OrderedDict[Tuple[str, str], Dict[str, Any]]" = OrderedDict()
    for e in exposures:
        key, variant, user, rec_id, items, fallback = _exposure_fields(e)
        if fallback and not include_fallbacks:
            continue
        g = groups.setdefault((key, variant), {"exp": 0, "users": set(), "items": 0, "fb": 0})
        if rec_id in shown:  # the same list logged twice counts once
            continue
        item_set = {str(i) for i in items}
        shown[rec_id] = ((key, variant), item_set)
        g["exp"] += 1
        g["users"].add(user)
        g["items"] += len(item_set)
        g["fb"] += int(fallback)

    clicked: Dict[str, Set[str]] = {}
    for c in clicks:
        rec_id, item_id = _click_fields(c)
        entry = shown.get(rec_id)
        if entry is not None and str(item_id) in entry[1]:
            clicked.setdefault(rec_id, set()).add(str(item_id))

    hits: Dict[Tuple[str, str], int] = {}
    clicks_per: Dict[Tuple[str, str], int] = {}
    for rec_id, items in clicked.items():
        group = shown[rec_id][0]
        hits[group] = hits.get(group, 0) + 1
        clicks_per[group] = clicks_per.get(group, 0) + len(items)

    out: List[VariantStats] = []
    for (key, variant), g in groups.items():
        h, c = hits.get((key, variant), 0), clicks_per.get((key, variant), 0)
        out.append(VariantStats(
            experiment_key=key,
            variant=variant,
            exposures=g["exp"],
            users=len(g["users"]),
            items_shown=g["items"],
            hits=h,
            clicks=c,
            hit_rate=h / g["exp"] if g["exp"] else 0.0,
            hit_rate_ci=wilson_interval(h, g["exp"], confidence),
            ctr=c / g["items"] if g["items"] else 0.0,
            ctr_ci=wilson_interval(c, g["items"], confidence),
            fallbacks=g["fb"],
        ))
    return out


def format_table(stats: Iterable[VariantStats], confidence: Optional[float] = 0.95) -> str:
    """A plain-text table of :func:`summarize`'s output, for a terminal or a ticket."""
    pct = f"{confidence:.0%} CI" if confidence is not None else "CI"
    header = (f"{'experiment':<20} {'variant':<12} {'exposures':>9} {'users':>7} "
              f"{'hit rate':>8} {pct:>17} {'CTR':>7} {pct:>17}")
    lines = [header, "-" * len(header)]
    for s in stats:
        lines.append(
            f"{s.experiment_key:<20.20} {s.variant:<12.12} {s.exposures:>9} {s.users:>7} "
            f"{s.hit_rate:>8.4f} [{s.hit_rate_ci[0]:.4f}, {s.hit_rate_ci[1]:.4f}] "
            f"{s.ctr:>7.4f} [{s.ctr_ci[0]:.4f}, {s.ctr_ci[1]:.4f}]"
        )
    return "\n".join(lines)
