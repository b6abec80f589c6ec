"""Exact top-k by cosine over a large item matrix, in chunks so memory stays bounded.

    values, cols = chunked_topk(queries, matrix, k, banned)   # (B, k), (B, k); -inf = no item

`matrix` holds only scorable rows (unit vectors); `banned[b]` lists row positions that query b
must never get (its history, its `exclude` ids). Scores per chunk are (B, chunk): one product
with a slice of the matrix, a per-chunk top-k while the scores are still in cache, then one merge. A plain
`torch.topk(queries @ matrix.T, k)` materialises B x M scores (256 MB for B=32, M=2M) and reads
them again; chunking never holds more than chunk x B.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

CHUNK_ROWS = 131072


def _banned_pairs(banned: Optional[List[Optional[Tensor]]], batch: int, device) -> Tuple[Tensor, Tensor]:
    """Flatten per-query banned columns into (cols, rows) sorted by column."""
    rows, cols = [], []
    for b, cols_b in enumerate(banned or []):
        if cols_b is not None and cols_b.numel():
            cols.append(cols_b.to(device=device, dtype=torch.long))
            rows.append(torch.full((cols_b.numel(),), b, dtype=torch.long, device=device))
    if not cols:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty
    c, r = torch.cat(cols), torch.cat(rows)
    order = torch.argsort(c)
    return c[order], r[order]


@torch.no_grad()
def chunked_topk(queries: Tensor, matrix: Tensor, k: int,
                 banned: Optional[List[Optional[Tensor]]] = None,
                 chunk_rows: int = CHUNK_ROWS) -> Tuple[Tensor, Tensor]:
    """queries (B, D), matrix (M, D) -> top-k cosine values (B, k') and row positions (B, k'),
    best first, k' = min(k, M). Banned positions score -inf; so do padding slots when fewer than
    k' rows are allowed: callers drop non-finite values."""
    m = matrix.size(0)
    b = queries.size(0)
    k = min(k, m)
    if k <= 0 or b == 0:
        empty = torch.empty(b, 0, device=queries.device)
        return empty, empty.long()
    ban_cols, ban_rows = _banned_pairs(banned, b, queries.device)
    values, positions = [], []
    for start in range(0, m, chunk_rows):
        chunk = matrix[start:start + chunk_rows]
        scores = queries @ chunk.t()  # (B, c)
        if ban_cols.numel():
            lo = int(torch.searchsorted(ban_cols, start))
            hi = int(torch.searchsorted(ban_cols, start + chunk.size(0)))
            if hi > lo:
                scores.index_put_((ban_rows[lo:hi], ban_cols[lo:hi] - start),
                                  torch.tensor(float("-inf"), device=scores.device))
        v, i = torch.topk(scores, min(k, chunk.size(0)), dim=1)  # (B, k)
        values.append(v)
        positions.append(i + start)
    v, i = torch.cat(values, 1), torch.cat(positions, 1)  # (B, n_chunks * k)
    best_v, best_j = torch.topk(v, k, dim=1)
    return best_v, i.gather(1, best_j)


@torch.no_grad()
def plain_topk(queries: Tensor, matrix: Tensor, k: int,
               banned: Optional[List[Optional[Tensor]]] = None) -> Tuple[Tensor, Tensor]:
    """Reference: torch.topk(queries @ matrix.T) with the same banning (tests and the bench)."""
    scores = queries @ matrix.t()
    for b, cols in enumerate(banned or []):
        if cols is not None and cols.numel():
            scores[b, cols.to(scores.device)] = float("-inf")
    return torch.topk(scores, min(k, matrix.size(0)), dim=1)
