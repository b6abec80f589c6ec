"""The candidate index the handler ranks: verified export files -> id lookup, vectors, popularity.

    meta = verify_export(model_dir)                    # sha256 of every file, or RuntimeError
    cat = Catalogue.load(model_dir, meta, device)
    idx = cat.lookup(["12", 7])                        # raw ids -> item indices (0 = unknown)
    pos = cat.positions(idx)                           # item index -> row of cat.matrix (-1: not scorable)

Only available items are scorable: `matrix` holds their unit vectors and nothing else (no padding
row, no unavailable rows), so no request can ever be answered with them and scoring needs no mask.
Lookup is a pandas Index (hash table over an array: tens of MB at 2M ids, not a dict's hundreds).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)

MODEL_FILE, VECTORS_FILE, ITEMS_FILE, METADATA_FILE = "model.pt", "item_vectors.npy", "items.parquet", "metadata.json"
REQUIRED_FILES = (MODEL_FILE, VECTORS_FILE, ITEMS_FILE)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_export(model_dir) -> dict:
    """Read metadata.json and check the sha256 of every file it lists; any problem raises, so a
    corrupt or incomplete archive fails at load time, never at the first request."""
    d = Path(model_dir)
    meta_path = d / METADATA_FILE
    if not meta_path.is_file():
        raise RuntimeError(f"seqrec: {METADATA_FILE} missing from {d}; was the archive built by archive.sh?")
    meta = json.loads(meta_path.read_text())
    files = meta.get("files") or {}
    unlisted = [f for f in REQUIRED_FILES if f not in files]
    if unlisted:
        raise RuntimeError(f"seqrec: {METADATA_FILE} lists no sha256 for {unlisted}")
    for name, expected in files.items():
        path = d / name
        if not path.is_file():
            raise RuntimeError(f"seqrec: {name} (listed in {METADATA_FILE}) is missing from {d}")
        actual = _sha256(path)
        if actual != expected:
            raise RuntimeError(f"seqrec: sha256 mismatch for {name}: metadata.json says {expected}, "
                               f"file has {actual}; the archive is corrupt or was edited")
    return meta


class Catalogue:
    def __init__(self, ids: pd.Index, id_type: str, vectors: torch.Tensor, popularity: np.ndarray,
                 available: np.ndarray, device: torch.device):
        n = len(ids)
        if vectors.dim() != 2 or vectors.size(0) != n + 1:
            raise RuntimeError(f"seqrec: {VECTORS_FILE} has shape {tuple(vectors.shape)}, "
                               f"expected ({n + 1}, D) for {n} items")
        if not ids.is_unique:
            raise RuntimeError(f"seqrec: item ids in {ITEMS_FILE} are not unique")
        self.ids, self.id_type, self.device = ids, id_type, device
        self.num_items = n
        self.raw_ids = ids.to_numpy()
        self.popularity = np.asarray(popularity, dtype=np.int64)
        total = int(self.popularity.sum())
        self.popularity_share = self.popularity / total if total > 0 else np.zeros(n)
        # rows[j] = item index of matrix row j; sorted, so positions() is a binary search.
        rows = np.flatnonzero(np.asarray(available, dtype=bool)) + 1
        self.rows = torch.from_numpy(rows).to(device)
        self.matrix = (vectors[1:] if len(rows) == n else vectors[rows]).to(device).contiguous()
        # Available items, most popular first (ties: lower index first), for the fallback.
        self.popular_order = rows[np.argsort(-self.popularity[rows - 1], kind="stable")]

    @classmethod
    def load(cls, model_dir, meta: dict, device: torch.device) -> "Catalogue":
        d = Path(model_dir)
        vectors = np.load(d / VECTORS_FILE, allow_pickle=False)
        if vectors.dtype != np.float32:
            raise RuntimeError(f"seqrec: {VECTORS_FILE} must be float32, got {vectors.dtype}")
        items = pd.read_parquet(d / ITEMS_FILE, columns=["item_id", "popularity", "available"])
        ids = pd.Index(items["item_id"])
        id_type = meta.get("item_id_type") or ("int" if pd.api.types.is_integer_dtype(ids) else "str")
        if id_type not in ("int", "str"):
            raise RuntimeError(f"seqrec: item_id_type must be 'int' or 'str', got {id_type!r}")
        if meta.get("num_items") is not None and int(meta["num_items"]) != len(ids):
            raise RuntimeError(f"seqrec: metadata.json says {meta['num_items']} items, {ITEMS_FILE} has {len(ids)}")
        return cls(ids, id_type, torch.from_numpy(vectors), items["popularity"].to_numpy(),
                   items["available"].to_numpy(), device)

    def lookup(self, raw: List[Any]) -> np.ndarray:
        """Normalised raw ids (None = cannot be in the index) -> item indices 1..N, 0 = unknown."""
        out = np.zeros(len(raw), dtype=np.int64)
        keep = [i for i, x in enumerate(raw) if x is not None]
        if keep:
            target = np.array([raw[i] for i in keep], dtype=np.int64 if self.id_type == "int" else object)
            found = self.ids.get_indexer(target)
            out[keep] = found.astype(np.int64) + 1
        return out

    def decode(self, idx: np.ndarray) -> list:
        """Item indices -> raw ids in their training type (numpy int64 -> int, str -> str)."""
        return self.raw_ids[np.asarray(idx, dtype=np.int64) - 1].tolist()

    def positions(self, idx: torch.Tensor) -> torch.Tensor:
        """Item indices -> matrix rows; -1 where the item is unknown or unavailable."""
        idx = idx.to(self.rows.device)
        if len(self.rows) == 0:
            return torch.full_like(idx, -1)
        pos = torch.searchsorted(self.rows, idx).clamp_(max=len(self.rows) - 1)
        return torch.where(self.rows[pos] == idx, pos, torch.full_like(pos, -1))

    def popular(self, k: int, banned: np.ndarray, candidates: Optional[np.ndarray]) -> np.ndarray:
        """The k most popular available item indices, not banned, within candidates if given."""
        if candidates is None:
            head = self.popular_order[: k + len(banned)]  # enough even if every banned id is in it
            return head[~np.isin(head, banned)][:k]
        cand = np.unique(candidates[candidates > 0])
        cand = cand[self.positions(torch.from_numpy(cand)).cpu().numpy() >= 0]
        cand = cand[~np.isin(cand, banned)]
        order = np.lexsort((cand, -self.popularity[cand - 1]))
        return cand[order][:k]
