"""Full-ranking evaluation: every item in the catalogue is ranked (never sampled negatives).

One evaluator for the model and every baseline. Items in the user's history are removed from the
ranking by default (the whole history when the caller passes `seen`, as the anchors do; else the
padded model input, its last total_length events); a tie counts against the target (rank = number of other items scoring at
least as high), as in GRU4Rec's conservative evaluation. A target that is itself in the history
is removed with it (exclude_seen): rank = number of items, never a hit.

A scorer is a query per user and a row per catalogue item (score = query . row), so the ranks are
counted one chunk of rows at a time: at most batch x chunk scores exist at once, never batch x
catalogue (512 x 2M float32 = 4 GB). The chunk is small on purpose: 512 x 2,048 scores (4 MB) stay
in cache between the product and the count, which measured 4x faster on this CPU than the
handler's 131,072-row chunks, whose scores are written to memory and read back.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

KS = (1, 5, 10, 20)
EVAL_CHUNK_ROWS = 2048  # rows per chunk: batch x chunk scores at most (see above)
LOG_EVERY_S = 30.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scorer:
    """scores = query(items, features, lengths) (B, D) @ rows.T, rows (N+1, D) with row 0 = padding."""
    rows: Tensor
    query: Callable[[Tensor, Tensor, Tensor], Tensor]


@torch.no_grad()
def target_ranks(scores: Tensor, targets: Tensor, histories: Tensor, exclude_seen: bool = True) -> Tensor:
    """The definition, on whole score rows (tests compare the chunked path with it).
    scores (B, N+1) with column 0 = padding; targets (B,); histories (B, T) padded with 0.
    Returns the 0-based rank of each target among all items (B,)."""
    scores = scores.clone()
    scores[:, 0] = -torch.inf
    if exclude_seen:
        scores.scatter_(1, histories, -torch.inf)
    target_scores = scores.gather(1, targets.view(-1, 1))
    return (scores >= target_scores).sum(dim=1) - 1


@torch.no_grad()
def chunked_ranks(queries: Tensor, rows: Tensor, targets: Tensor, histories: Tensor, exclude_seen: bool = True,
                  scorable: Optional[Tensor] = None, chunk_rows: int = EVAL_CHUNK_ROWS) -> Tensor:
    """target_ranks(queries @ rows.T, ...) without the (B, N+1) matrix. scorable (N+1,) bool:
    rows never counted when False (and a target there is never a hit)."""
    b, n_items = queries.size(0), rows.size(0) - 1
    # The target's score from a product of the same kind as the chunks' (not a row-wise dot), so
    # an item with the target's own vector ties with it exactly.
    target_scores = (queries @ rows[targets].T).diagonal().clone()  # (B,)
    lost = torch.zeros(b, dtype=torch.bool)
    if exclude_seen:
        lost |= (histories == targets.view(-1, 1)).any(dim=1)
    if scorable is not None:
        lost |= ~scorable[targets]
    # (user, column) pairs never counted: the target itself, and the history when exclude_seen.
    cols = torch.cat([targets.view(-1, 1), histories], 1) if exclude_seen else targets.view(-1, 1)
    users = torch.arange(b).view(-1, 1).expand_as(cols).reshape(-1)
    cols = cols.reshape(-1)
    order = torch.argsort(cols)
    cols, users = cols[order], users[order]
    starts = list(range(0, n_items + 1, chunk_rows))
    bounds = torch.searchsorted(cols, torch.tensor(starts + [n_items + 1])).tolist()  # pairs per chunk
    minus_inf = torch.tensor(-torch.inf, dtype=queries.dtype)
    threshold = target_scores.view(-1, 1)
    counts = torch.zeros(b, dtype=torch.long)
    for c, start in enumerate(starts):
        stop = min(start + chunk_rows, n_items + 1)
        scores = queries @ rows[start:stop].T  # (B, c)
        if start == 0:
            scores[:, 0] = -torch.inf  # padding
        if scorable is not None:
            scores.masked_fill_(~scorable[start:stop], -torch.inf)
        lo, hi = bounds[c], bounds[c + 1]
        if hi > lo:
            scores.index_put_((users[lo:hi], cols[lo:hi] - start), minus_inf)
        # Summing the comparison as bytes into int32 is ~2x faster than a bool sum into int64.
        counts += torch.ge(scores, threshold).view(torch.uint8).sum(dim=1, dtype=torch.int32)
    # A removed target scores -inf in the definition, and every column ties with it.
    lost |= target_scores == -torch.inf
    return torch.where(lost, torch.full_like(counts, n_items), counts)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = KS) -> Dict[str, np.ndarray]:
    """Per-case metric arrays: HR@k, NDCG@k, MRR@k."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: Dict[str, np.ndarray] = {}
    for k in ks:
        hit = ranks < k
        out[f"HR@{k}"] = hit.astype(np.float64)
        out[f"NDCG@{k}"] = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
        out[f"MRR@{k}"] = np.where(hit, 1.0 / (ranks + 1.0), 0.0)
    return out


def summarize(per_case: Dict[str, np.ndarray], ci: bool = False, seed: int = 0, n_boot: int = 1000) -> Dict[str, float]:
    """Means, and with ci=True a 95% bootstrap interval over evaluation users for each metric."""
    out: Dict[str, float] = {}
    n = len(next(iter(per_case.values()))) if per_case else 0
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n)) if ci and n else None
    for name, values in per_case.items():
        out[name] = float(values.mean()) if n else float("nan")
        if idx is not None:
            boots = values[idx].mean(axis=1)
            out[f"{name}_ci95"] = [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]
    out["users"] = n
    return out


@torch.no_grad()
def evaluate_ranking(scorer: Scorer, items: Tensor, features: Tensor, lengths: Tensor, targets: Tensor,
                     exclude_seen: bool = True, batch_size: int = 512, scorable: Optional[Tensor] = None,
                     chunk_rows: int = EVAL_CHUNK_ROWS, seen=None) -> Dict[str, np.ndarray]:
    """Per-case metrics of the full ranking; items/features/lengths: padded histories (B, T, ...).
    seen: train.sequences.SeenItems of the same cases, the items exclude_seen removes (default: `items`)."""
    if seen is not None and len(seen) != items.size(0):
        raise ValueError(f"seen has {len(seen)} cases, items {items.size(0)}")
    ranks: List[Tensor] = []
    n, t0, last = items.size(0), time.perf_counter(), time.perf_counter()
    for s in range(0, n, batch_size):
        sl = slice(s, s + batch_size)
        queries = scorer.query(items[sl], features[sl], lengths[sl])
        removed = items[sl] if seen is None else seen.batch(sl)
        ranks.append(chunked_ranks(queries, scorer.rows, targets[sl], removed, exclude_seen, scorable, chunk_rows))
        if time.perf_counter() - last > LOG_EVERY_S:  # a long evaluation shows progress in a log
            last = time.perf_counter()
            done = min(s + batch_size, n)
            log.info("evaluated %d/%d users, %.0f users/s", done, n, done / (last - t0))
    r = torch.cat(ranks).numpy() if ranks else np.zeros(0)
    return metrics_from_ranks(r)


def model_scorer(model) -> Scorer:
    """Cosine of taste and item vectors: the ranking the server uses (score() is monotone in it);
    with item_bias, the cosine plus each item's bias / |w| (SequenceModel.ranking_rows)."""
    if not getattr(model, "use_item_bias", False):  # a scripted export (never biased) may predate it
        return Scorer(model.item_matrix(), model)
    return Scorer(model.ranking_rows(), lambda items, features, lengths: torch.nn.functional.pad(
        model(items, features, lengths), (0, 1), value=1.0))


def fixed_scorer(values) -> Scorer:
    """The same score per item for everyone (values (N+1,)): float32 when that holds every value
    exactly (counts below 2^24; half the cost of float64), else float64."""
    rows = torch.as_tensor(values, dtype=torch.float64).view(-1, 1)
    if torch.equal(rows.float().double(), rows):
        rows = rows.float()
    return Scorer(rows, lambda items, features, lengths: torch.ones(items.size(0), 1, dtype=rows.dtype))


def popularity_scorer(popularity: np.ndarray) -> Scorer:
    """popularity: (N+1,) training counts; the same list for everyone."""
    return fixed_scorer(popularity)
