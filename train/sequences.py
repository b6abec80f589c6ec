"""SequentialDataset: padded training windows and evaluation histories, exactly as the model's own
padding (`SequenceModel.pad`) and event encoding (`SequenceModel.encode_events`) would make them.

Training: a user's event rows e_1..e_n give inputs e_1..e_{n-1} and targets e_2..e_n. Sequences
longer than total_length are cut into windows ending at the last event, so no event is wasted.

Windows and histories are contiguous row ranges (train.split.RowRanges), so the item columns are
gathered with numpy into preallocated arrays, a chunk of windows at a time: no Python loop per user.
The per-event features, when the model uses any, still go through `model.encode_events` one window
at a time (the one source of truth, shared with serving): that is the slow path, linear in events.
tests/test_sequences.py checks both against pad_batch on lists, as the code before this one built them.
"""
from __future__ import annotations

import time
from typing import Optional, Tuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from model import SequenceModel

from .split import Cases, RowRanges

_CHUNK = 1 << 16  # windows gathered per numpy step: bounds the (chunk, T) temporaries to a few MB


class Coded:
    """A column as small codes into its distinct values: rows -> values, without one Python object
    per event (30M events of an object column of strings would cost gigabytes)."""

    def __init__(self, codes: np.ndarray, values: np.ndarray):
        self.codes, self.values = codes, values

    @classmethod
    def constant(cls, value, n: int, dtype=object) -> "Coded":
        return cls(np.broadcast_to(np.int8(0), (n,)), np.array([value], dtype=dtype))

    @classmethod
    def labels(cls, column: pd.Series) -> "Coded":
        """Text labels as `astype(str)` gives them; a missing one stays NaN (encode_events: unknown)."""
        cat = pd.Categorical(column)
        values = np.array([str(v) for v in cat.categories] + [np.nan], dtype=object)
        codes = np.where(cat.codes < 0, len(values) - 1, cat.codes).astype(np.int32)
        return cls(codes, values)

    def __getitem__(self, rows) -> np.ndarray:
        return self.values[self.codes[rows]]

    def __len__(self) -> int:
        return len(self.codes)


class EventColumns:
    """The event table as arrays, so encoding 30M events is neither a pandas row loop nor a copy of
    every column: item indices int32, timestamps float64, labels as codes."""

    def __init__(self, events: pd.DataFrame):
        n = len(events)
        self.items = events["item_idx"].to_numpy().astype(np.int32, copy=False)
        self.timestamps = events["timestamp"].to_numpy(dtype=np.float64)
        self.event_types = Coded.labels(events["event_type"]) if "event_type" in events else Coded.constant("", n)
        self.sources = Coded.labels(events["source"]) if "source" in events else Coded.constant("", n)
        self.strengths = (events["strength"].to_numpy(dtype=np.float64) if "strength" in events
                          else Coded.constant(np.nan, n, np.float64))

    def features(self, model: SequenceModel, rows: np.ndarray, now: float):
        if not uses_features(model):
            return []
        return model.encode_events(self.timestamps[rows].tolist(), self.event_types[rows].tolist(),
                                   self.sources[rows].tolist(), self.strengths[rows].tolist(), float(now))


def uses_features(model: SequenceModel) -> bool:
    return bool(model.use_time or model.use_event_type or model.use_source or model.use_strength)


class SeenItems:
    """Each case's whole history, not only the last total_length events the model reads: what a
    full-ranking evaluation removes with exclude_seen (the anchors remove a user's full history).
    Gathered one batch at a time, so a million long histories never sit in one padded array."""

    def __init__(self, items: np.ndarray, ranges: RowRanges):
        self.items, self.starts, self.stops = items, ranges.starts, ranges.stops

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, sl: slice) -> Tensor:
        """(b, longest history in the batch) item indices, padded with 0."""
        s, n = self.starts[sl], self.stops[sl] - self.starts[sl]
        return torch.from_numpy(_gather(self.items, s, n, int(n.max()) if len(n) else 0, np.int64))


def seen_items(cols: EventColumns, cases: Cases) -> SeenItems:
    return SeenItems(cols.items, cases.histories)


def _gather(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int, dtype) -> np.ndarray:
    """(B, width) array: row i = values[starts[i]:starts[i] + lengths[i]], then 0 (lengths <= width)."""
    out = np.zeros((len(starts), width), dtype=dtype)
    col = np.arange(width)
    for a in range(0, len(starts), _CHUNK):
        s, n = starts[a:a + _CHUNK, None], lengths[a:a + _CHUNK, None]
        keep = col < n
        out[a:a + _CHUNK] = np.where(keep, values[np.where(keep, s + col, 0)], 0)
    return out


def _no_features(b: int, model: SequenceModel, dtype) -> Tensor:
    # All zeros: one element viewed as (B, T, F), so a million windows cost no memory for it.
    return torch.zeros(1, 1, model.num_features, dtype=dtype).expand(b, model.total_length, model.num_features)


class SequentialDataset(torch.utils.data.Dataset):
    """Training windows: items (W, T) int32, features (W, T, F) int32, targets (W, T) int32,
    lengths (W,) int64 (the embeddings take int32 indices; gather needs int64 lengths)."""

    def __init__(self, model: SequenceModel, cols: EventColumns, user_rows: RowRanges):
        t0 = time.perf_counter()
        t = model.total_length
        n = user_rows.lengths
        per_user = np.where(n >= 2, (n - 2) // t + 1, 0)  # windows end at n, n - t, n - 2t, ... >= 2
        user = np.repeat(np.arange(len(n)), per_user)
        k = np.arange(len(user)) - np.repeat(np.cumsum(per_user) - per_user, per_user)
        end = n[user] - k * t
        start = np.maximum(0, end - t - 1)
        first = user_rows.starts[user] + start  # event row of each window's first input
        lengths = end - start - 1
        self.items = torch.from_numpy(_gather(cols.items, first, lengths, t, np.int32))
        self.targets = torch.from_numpy(_gather(cols.items, first + 1, lengths, t, np.int32))
        self.lengths = torch.from_numpy(lengths.astype(np.int64))
        if uses_features(model):  # the slow path: encode_events per window
            feats = np.zeros((len(first), t, model.num_features), dtype=np.int32)
            for w, (a, m) in enumerate(zip(first.tolist(), lengths.tolist())):
                # Age features are relative to the time of the window's last target.
                feats[w, :m] = cols.features(model, np.arange(a, a + m), cols.timestamps[a + m])
            self.features = torch.from_numpy(feats)
        else:
            self.features = _no_features(len(first), model, torch.int32)
        self.num_events = int(self.lengths.sum())
        self.build_seconds = time.perf_counter() - t0

    def __len__(self) -> int:
        return self.items.size(0)

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.items[i], self.features[i], self.targets[i], self.lengths[i]


def encode_cases(model: SequenceModel, cols: EventColumns, cases: Cases,
                 rows: Optional[np.ndarray] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Evaluation histories padded exactly as serving pads them (model.pad: the last total_length
    events): items (B, T), features (B, T, F), lengths (B,), all int64 (the evaluator scatters
    with the items). `rows`: only those cases (a batch), e.g. to encode a million cases in slices."""
    h = cases.histories if rows is None else cases.histories.take(rows)
    now = cases.now if rows is None else cases.now[rows]
    t = model.total_length
    start = np.maximum(h.starts, h.stops - t)
    lengths = h.stops - start
    items = torch.from_numpy(_gather(cols.items, start, lengths, t, np.int64))
    if not uses_features(model):
        return items, _no_features(len(start), model, torch.long), torch.from_numpy(lengths)
    feats = np.zeros((len(start), t, model.num_features), dtype=np.int64)
    for i, (a, s, b) in enumerate(zip(h.starts.tolist(), start.tolist(), h.stops.tolist())):
        # One event before the kept ones, so the first kept event's gap is the one the full history gives.
        lead = max(a, s - 1)
        f = cols.features(model, np.arange(lead, b), now[i])
        feats[i, :b - s] = f[s - lead:]
    return items, torch.from_numpy(feats), torch.from_numpy(lengths)
