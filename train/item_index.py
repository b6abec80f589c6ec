"""Raw item id <-> item index 1..N (0 = padding). Raw ids keep their type (int64 or str).

A pandas Index is the lookup: hash-based and array-backed, so 2M ids cost tens of MB, not a
Python dict's hundreds.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd


class ItemIndex:
    def __init__(self, ids: Iterable):
        self.ids = pd.Index(ids)
        if not self.ids.is_unique:
            raise ValueError("item ids must be unique")
        if len(self.ids) and not (pd.api.types.is_integer_dtype(self.ids) or self.ids.dtype == object
                                  or pd.api.types.is_string_dtype(self.ids)):
            raise TypeError(f"item ids must be int or str, got {self.ids.dtype}")

    @classmethod
    def from_items(cls, item_ids: pd.Series) -> "ItemIndex":
        """Sorted unique ids, so the same data always gives the same indices."""
        return cls(np.sort(pd.unique(item_ids)))

    @property
    def id_type(self) -> str:
        return "int" if pd.api.types.is_integer_dtype(self.ids) else "str"

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, raw) -> np.ndarray:
        """Raw ids -> indices 1..N; unknown ids -> 0."""
        return self.ids.get_indexer(pd.Index(raw)).astype(np.int64) + 1

    def decode(self, idx) -> np.ndarray:
        """Indices 1..N -> raw ids."""
        return self.ids.to_numpy()[np.asarray(idx, dtype=np.int64) - 1]
