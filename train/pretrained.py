"""Seed stage 1: fixed item vectors, from a file or from the training data itself.

`svd_item_vectors` factorises the positive PMI of item co-occurrence within a small window of each
user's sequence (a truncated randomized SVD on a sparse matrix), so even the fixed-vector stage
needs nothing outside the event log.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pandas as pd
import torch

from handler.seqrec_artifact import ItemIndex


def svd_item_vectors(sequences: List[np.ndarray], num_items: int, dim: int, window: int = 3,
                     seed: int = 0) -> torch.Tensor:
    """sequences: item index arrays (1..N). Returns (N+1, dim) vectors, row 0 zero."""
    rows, cols = [], []
    for seq in sequences:
        for off in range(1, window + 1):
            if len(seq) > off:
                rows.append(seq[:-off]); cols.append(seq[off:])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    n = num_items + 1
    idx = torch.as_tensor(np.stack([np.r_[r, c], np.r_[c, r]]), dtype=torch.long)
    # Checked: an index past the catalogue would otherwise be undefined behaviour, not an error.
    co = torch.sparse_coo_tensor(idx, torch.ones(idx.size(1)), (n, n), check_invariants=True).coalesce()
    i, v = co.indices(), co.values()
    total = v.sum()
    marg = torch.zeros(n).index_add_(0, i[0], v)
    pmi = torch.log(v * total / (marg[i[0]] * marg[i[1]]).clamp(min=1e-12)).clamp(min=0)
    keep = pmi > 0
    m = torch.sparse_coo_tensor(i[:, keep], pmi[keep], (n, n), check_invariants=False).coalesce()  # a subset of co's
    torch.manual_seed(seed)
    q = min(dim, n - 1)
    u, s, _ = torch.svd_lowrank(m, q=q, niter=4)
    vec = u * s.sqrt()
    if q < dim:
        vec = torch.cat([vec, torch.zeros(n, dim - q)], dim=1)
    # Items with no co-occurrence get a small random vector rather than a zero one.
    empty = vec.norm(dim=1) == 0
    vec[empty] = torch.randn(int(empty.sum()), dim) * 1e-3
    vec[0] = 0
    return vec


def load_item_vectors(path: str, index: ItemIndex, dim: int) -> torch.Tensor:
    """A .npy of shape (N+1, dim) in index order, or a .parquet with `item_id` and `vector` (list)
    or columns v0..v{dim-1}, keyed by raw item id. Items without a vector get a small random one."""
    p = Path(path)
    if p.suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
        if arr.shape != (len(index) + 1, dim):
            raise ValueError(f"{p}: expected shape {(len(index) + 1, dim)}, got {arr.shape}")
        return torch.as_tensor(arr, dtype=torch.float32)
    if p.suffix != ".parquet":
        raise ValueError(f"item vectors must be .npy or .parquet, got {p}")
    df = pd.read_parquet(p)
    if "item_id" not in df:
        raise ValueError(f"{p}: missing column 'item_id'")
    mat = np.stack(df["vector"].to_numpy()) if "vector" in df else df[[f"v{j}" for j in range(dim)]].to_numpy()
    if mat.shape[1] != dim:
        raise ValueError(f"{p}: vectors have {mat.shape[1]} dims, model wants {dim}")
    out = torch.randn(len(index) + 1, dim) * 1e-3
    pos = index.encode(df["item_id"])
    known = pos > 0
    out[torch.as_tensor(pos[known])] = torch.as_tensor(mat[known], dtype=torch.float32)
    out[0] = 0
    return out
