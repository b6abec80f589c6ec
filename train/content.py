"""Item content -> the id tensors of the model's ContentEncoder (model/content.py). The one place
that encodes content: training (pipeline.build_model), cold-start evaluation and catalogue rebuilds
(train.catalog) all call `encode_content` with the spec saved in the ModelConfig.

    fit_content_spec(model_config, items)                       # fields, vocabulary, numeric stats
    categorical, text, numeric = encode_content(model_config, items_in_index_order)

Fields (auto-detected from the item table unless the config names them):
- categorical: CATEGORICAL_FIELDS present, e.g. `category` (synthetic) or `genres` (MovieLens).
  A value may be a string, a list of strings (multi-hot), or a "|"-separated string. Each value
  becomes a token "field=value" with an id from the vocabulary (1 = not in the vocabulary).
- numeric: NUMERIC_FIELDS present, e.g. `price`: log1p(value), standardised with the mean and std
  of the training item table; a missing value gives 0 and a "missing" flag of 1.
- text: TEXT_FIELDS present, e.g. `title`, `tags`: lower-cased words, each hashed (crc32 of
  "field:word", stable across processes and machines) into `content_hash_buckets` ids.
"""
from __future__ import annotations

import logging
import re
import zlib
from typing import Iterable, List, Tuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from model import ModelConfig

log = logging.getLogger(__name__)

CATEGORICAL_FIELDS = ("category", "genres", "brand", "condition")
NUMERIC_FIELDS = ("price",)
TEXT_FIELDS = ("title", "tags", "description")
_WORD = re.compile(r"[a-z0-9]+")


def categorical_values(v) -> List[str]:
    """One categorical cell -> its values (multi-hot cells are lists, arrays or "a|b" strings)."""
    if v is None:
        return []
    if isinstance(v, (list, tuple, np.ndarray)):
        return [str(x) for x in v if x is not None and x == x and str(x) != ""]
    if isinstance(v, float) and v != v:
        return []
    return [x for x in str(v).split("|") if x]


def _words(v) -> List[str]:
    if v is None or (isinstance(v, float) and v != v):
        return []
    if isinstance(v, (list, tuple, np.ndarray)):
        v = " ".join(str(x) for x in v)
    return _WORD.findall(str(v).lower())


def fit_content_spec(mc: ModelConfig, items: pd.DataFrame) -> None:
    """Fill the content fields, vocabulary and numeric stats of `mc` from the training item table
    (content only, no interactions, so using every listed item leaks nothing). Fields the config
    already names are kept; a named field missing from the table is an error."""
    cols = set(items.columns)
    named = mc.content_categorical + mc.content_numeric + mc.content_text
    missing = sorted(set(named) - cols)
    if missing:
        raise ValueError(f"content fields {missing} not in the item table (columns: {sorted(cols)})")
    if not named:
        mc.content_categorical = [f for f in CATEGORICAL_FIELDS if f in cols]
        mc.content_numeric = [f for f in NUMERIC_FIELDS if f in cols]
        mc.content_text = [f for f in TEXT_FIELDS if f in cols]
    if not (mc.content_categorical or mc.content_numeric or mc.content_text):
        raise ValueError(f"use_content: the item table has no content field (columns: {sorted(cols)}); "
                         f"known: {CATEGORICAL_FIELDS + NUMERIC_FIELDS + TEXT_FIELDS}")
    vocab = set()
    for f in mc.content_categorical:
        for v in items[f]:
            vocab.update(f"{f}={x}" for x in categorical_values(v))
    mc.content_vocab = sorted(vocab)
    stats = []
    for f in mc.content_numeric:
        x = np.log1p(pd.to_numeric(items[f], errors="coerce").clip(lower=0).dropna().to_numpy(np.float64))
        stats.append([float(x.mean()) if len(x) else 0.0, float(x.std()) if len(x) > 1 and x.std() > 0 else 1.0])
    mc.content_numeric_stats = stats
    log.info("content: categorical %s (%d values), numeric %s, text %s", mc.content_categorical,
             len(mc.content_vocab), mc.content_numeric, mc.content_text)


def _hash(field: str, word: str, buckets: int) -> int:
    return zlib.crc32(f"{field}:{word}".encode("utf-8")) % buckets + 1


def _pad(rows: Iterable[List[int]], n: int, width: int) -> Tensor:
    out = torch.zeros(n, width, dtype=torch.long)
    for i, r in enumerate(rows):
        r = r[:width]
        if r:
            out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def encode_content(mc: ModelConfig, items: pd.DataFrame) -> Tuple[Tensor, Tensor, Tensor]:
    """Rows of `items` (any order; missing fields or cells = no content) -> (categorical (M, K),
    text (M, K), numeric (M, 2F)) for the model. Unknown categorical values map to id 1."""
    n, k = len(items), mc.content_max_tokens
    ids = {tok: i + 2 for i, tok in enumerate(mc.content_vocab)}
    cat_rows: List[List[int]] = [[] for _ in range(n)]
    for f in mc.content_categorical:
        if f not in items:
            continue
        for i, v in enumerate(items[f].tolist()):
            cat_rows[i].extend(ids.get(f"{f}={x}", 1) for x in categorical_values(v))
    text_rows: List[List[int]] = [[] for _ in range(n)]
    for f in mc.content_text:
        if f not in items:
            continue
        for i, v in enumerate(items[f].tolist()):
            seen = text_rows[i]
            for w in _words(v):
                h = _hash(f, w, mc.content_hash_buckets)
                if h not in seen:
                    seen.append(h)
    numeric = torch.zeros(n, max(1, 2 * len(mc.content_numeric)))
    for j, (f, (mean, std)) in enumerate(zip(mc.content_numeric, mc.content_numeric_stats)):
        x = (pd.to_numeric(items[f], errors="coerce") if f in items else pd.Series(np.nan, index=items.index))
        x = x.to_numpy(np.float64)
        ok = np.isfinite(x)
        z = np.where(ok, (np.log1p(np.clip(np.nan_to_num(x), 0, None)) - mean) / std, 0.0)
        numeric[:, 2 * j] = torch.as_tensor(z, dtype=torch.float32)
        numeric[:, 2 * j + 1] = torch.as_tensor(~ok, dtype=torch.float32)
    return _pad(cat_rows, n, k), _pad(text_rows, n, k), numeric


def index_content(mc: ModelConfig, items: pd.DataFrame, ids: pd.Index) -> Tuple[Tensor, Tensor, Tensor]:
    """Content tensors for item indices 0..len(ids): row 0 is padding (no content), row j is the
    item ids[j - 1]. Items absent from the table get no content (all padding, numeric missing)."""
    table = items.drop_duplicates("item_id").set_index("item_id").reindex(ids).reset_index()
    absent = int(table[[c for c in table.columns if c != "item_id"]].isna().all(axis=1).sum()) if len(table.columns) > 1 else len(ids)
    if absent:
        log.warning("content: %d of %d items have no row in the item table", absent, len(ids))
    cat, text, num = encode_content(mc, table)
    pad = encode_content(mc, pd.DataFrame({"item_id": [None]}))
    return torch.cat([pad[0], cat]), torch.cat([pad[1], text]), torch.cat([pad[2], num])
