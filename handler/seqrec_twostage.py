"""Scoring the whole catalogue: the index proposes a shortlist, exact cosine re-ranks it.

    opts = ScoringOptions.from_yaml(context.model_yaml_config)   # seqrec: {scoring, ef_search, nprobe, shortlist}
    cos, pos = rank_catalogue(queries, [(k, banned), ...], catalogue, index)[b]   # index None: exact

The shortlist over-fetches k + (the request's banned rows) + a margin, inflated by the index's
dead share (sold items kept in an HNSW graph), and at least the index's own `min_fetch` (a PQ
index's `shortlist`: its coarse codes only propose, the exact cosine decides), so exclusions are
checked after the search, never inside it (faiss's HNSW + IDSelector can return too few results,
issue #3186). Whatever survives is re-ranked by the exact cosine over the item vectors, so a
returned score is always the exact one. A request whose shortlist runs dry (fewer than k
survivors when k qualify) is answered by the exact chunked scan instead: never fewer answers than
the exact path gives.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

if __package__:  # imported as handler.seqrec_twostage
    from .seqrec_index import SEARCH_KNOBS
    from .seqrec_scoring import chunked_topk
else:  # TorchServe: the archive's files sit flat on the worker's import path
    from seqrec_index import SEARCH_KNOBS
    from seqrec_scoring import chunked_topk

if TYPE_CHECKING:
    from handler.seqrec_catalogue import Catalogue
    from handler.seqrec_index import CandidateIndex

log = logging.getLogger(__name__)
MARGIN = 32          # extra shortlist slots beyond k + banned: re-ranking a few more is cheap
SCORING = ("auto", "exact", "index")
# How often each path answered, per worker (tests and logs read it).
STATS: Counter = Counter()


@dataclass(frozen=True)
class ScoringOptions:
    scoring: str = "auto"               # auto: the index when the export has one, else exact
    ef_search: Optional[int] = None     # None: the export's own knobs
    nprobe: Optional[int] = None
    shortlist: Optional[int] = None

    @classmethod
    def from_yaml(cls, yaml_config: Optional[Dict[str, Any]]) -> "ScoringOptions":
        """The model YAML's `seqrec:` section; a typo fails the worker's load, loudly."""
        section = (yaml_config or {}).get("seqrec") or {}
        if not isinstance(section, dict):
            raise ValueError(f"model YAML: seqrec must be a mapping, got {section!r}")
        unknown = set(section) - {"scoring", *SEARCH_KNOBS}
        if unknown:
            raise ValueError(f"model YAML: unknown seqrec keys {sorted(unknown)} "
                             f"(known: scoring, {', '.join(SEARCH_KNOBS)})")
        scoring = section.get("scoring", "auto")
        if scoring not in SCORING:
            raise ValueError(f"model YAML: seqrec.scoring must be one of {SCORING}, got {scoring!r}")
        for key in SEARCH_KNOBS:
            v = section.get(key)
            if v is not None and (type(v) is not int or v < 1):
                raise ValueError(f"model YAML: seqrec.{key} must be a positive integer, got {v!r}")
        return cls(scoring, *(section.get(key) for key in SEARCH_KNOBS))


@torch.no_grad()
def rank_catalogue(queries: Tensor, asks: List[Tuple[int, Tensor]], catalogue: "Catalogue",
                   index: Optional["CandidateIndex"]) -> List[Tuple[Tensor, Tensor]]:
    """queries (B, D); asks[b] = (k, banned matrix rows) -> per request (cosines, matrix rows),
    best first; -inf cosines are padding (the caller drops them)."""
    out: List[Optional[Tuple[Tensor, Tensor]]] = [None] * len(asks)
    if index is not None:
        out = shortlist_topk(queries, asks, catalogue, index)
    rest = [b for b, r in enumerate(out) if r is None]
    if rest:
        STATS["exact"] += len(rest)
        cos, pos = chunked_topk(queries[rest], catalogue.matrix, max(asks[b][0] for b in rest),
                                [asks[b][1] for b in rest])
        for row, b in enumerate(rest):
            out[b] = (cos[row], pos[row])
    return out  # type: ignore[return-value]


def shortlist_topk(queries: Tensor, asks: List[Tuple[int, Tensor]], catalogue: "Catalogue",
                   index: "CandidateIndex") -> List[Optional[Tuple[Tensor, Tensor]]]:
    """The two stages; None for a request whose shortlist ran dry (the caller scans it exactly)."""
    scorable = len(catalogue.rows)
    # Each request searched with its own shortlist size: a deeper search finds other neighbours,
    # so an answer must not depend on the batch it came in.
    fetch = [min(max(math.ceil((k + banned.numel()) / (1 - min(index.dead_share, 0.9))) + max(MARGIN, k),
                     index.min_fetch), max(1, index.entries)) for k, banned in asks]
    q = queries.float().cpu().numpy()
    ids: List[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(asks)
    for f in set(fetch):
        rows = [b for b, fb in enumerate(fetch) if fb == f]
        for b, found in zip(rows, index.search(q[rows], f)):
            ids[b] = found
    out: List[Optional[Tuple[Tensor, Tensor]]] = []
    for b, (k, banned) in enumerate(asks):
        cand = np.unique(ids[b][ids[b] > 0])  # re-added items appear twice
        pos = catalogue.positions(torch.from_numpy(cand))
        pos = pos[pos >= 0]  # sold since the index was built
        if banned.numel():
            pos = pos[~torch.isin(pos, banned)]
        if pos.numel() < min(k, scorable - banned.numel()):
            out.append(None)
            STATS["shortlist_dry"] += 1
            continue
        cos = catalogue.row_vectors(pos) @ queries[b]
        top = torch.topk(cos, min(k, cos.numel()))
        out.append((top.values, pos[top.indices]))
        STATS["index"] += 1
    return out
