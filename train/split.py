"""Splits of a sorted event log into training sequences and evaluation cases.

Every user's events are in order (user, timestamp, item id), so every set of rows used here (a
user's training events, a history) is one contiguous range of the event table: `RowRanges` holds
them as (start, stop) pairs, two int64 arrays however many users there are, and every split is
numpy arithmetic on the per-user offsets (CSR), not a Python loop per user. Two protocols:
- leave-one-out: last event = test target, the one before = validation target, the rest trains;
- temporal: one global cut; events before it train, each user's first event after it is the test
  target (history = everything before it), likewise for validation at an earlier cut.
Users too short to evaluate are not dropped silently: they train only, and are counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator

import numpy as np
import pandas as pd


@dataclass
class RowRanges:
    """Ranges [starts[i], stops[i]) of event rows; iterating or indexing gives each as an array of
    row indices (as the lists of arrays these replace did), `flat()` all of them in order."""
    starts: np.ndarray
    stops: np.ndarray

    @classmethod
    def empty(cls) -> "RowRanges":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))

    def __post_init__(self):
        self.starts = np.asarray(self.starts, dtype=np.int64)
        self.stops = np.asarray(self.stops, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.arange(self.starts[i], self.stops[i])

    def __iter__(self) -> Iterator[np.ndarray]:
        return (np.arange(a, b) for a, b in zip(self.starts.tolist(), self.stops.tolist()))

    @property
    def lengths(self) -> np.ndarray:
        return self.stops - self.starts

    def take(self, pick: np.ndarray) -> "RowRanges":
        return RowRanges(self.starts[pick], self.stops[pick])

    def flat(self) -> np.ndarray:
        """Every row of every range, in order (int64)."""
        lengths = self.lengths
        out = np.ones(int(lengths.sum()), dtype=np.int64)
        nonempty = lengths > 0
        first = np.cumsum(lengths)[nonempty] - lengths[nonempty]  # where each range begins in `out`
        starts = self.starts[nonempty]
        out[first] = starts
        out[first[1:]] -= self.stops[nonempty][:-1] - 1  # jump from the previous range's last row
        return np.cumsum(out)


@dataclass
class Cases:
    """Evaluation cases: row i predicts targets[i] from event rows histories[i] (a range of the
    event table), at time now[i]."""
    histories: RowRanges
    targets: np.ndarray
    now: np.ndarray
    users: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, n: int, seed: int = 0) -> "Cases":
        """A uniform random sample of n cases without replacement (numpy's default_rng(seed)), in
        their original order; all of them when n <= 0 or n >= len."""
        if n <= 0 or n >= len(self):
            return self
        pick = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return Cases(self.histories.take(pick), self.targets[pick], self.now[pick], self.users[pick])


@dataclass
class Split:
    train: RowRanges                    # per user: event rows used for training, in order
    valid: Cases
    test: Cases
    counts: Dict[str, int] = field(default_factory=dict)
    # loo: per user, every event but the test target (train + validation), for refitting
    train_with_valid: RowRanges = field(default_factory=RowRanges.empty)


def user_offsets(events: pd.DataFrame) -> np.ndarray:
    """CSR offsets (U+1,): user u's rows are offsets[u]:offsets[u+1]."""
    users = events["user_id"].to_numpy()
    starts = np.flatnonzero(users[1:] != users[:-1]) + 1
    return np.concatenate([[0], starts, [len(users)]]).astype(np.int64) if len(users) else np.zeros(1, np.int64)


def _cases(hist_start: np.ndarray, target: np.ndarray, events: pd.DataFrame) -> Cases:
    items = events["item_idx"].to_numpy()
    ts = events["timestamp"].to_numpy(dtype=np.float64)
    users = events["user_id"].to_numpy()
    t = np.asarray(target, dtype=np.int64)
    return Cases(RowRanges(hist_start, t), items[t].astype(np.int64), ts[t], users[t])


def leave_one_out(events: pd.DataFrame, min_events: int = 3) -> Split:
    """Events must be sorted by (user, timestamp, item id) and carry `item_idx`."""
    min_events = max(min_events, 3)
    off = user_offsets(events)
    start, stop = off[:-1], off[1:]
    n = stop - start
    ok = n >= min_events
    # Short users train (and refit) on everything; the others lose their last one or two events.
    train = RowRanges(start, stop - 2 * ok)
    refit = RowRanges(start, stop - ok)
    s, e = start[ok], stop[ok]
    counts = {"users": len(n), "users_evaluated": int(ok.sum()), "users_too_short_train_only": int((~ok).sum())}
    return Split(train, _cases(s, e - 2, events), _cases(s, e - 1, events), counts, refit)


def temporal_split(events: pd.DataFrame, cut: float = 0.9, min_events: int = 1) -> Split:
    """cut: quantile of all timestamps where the test period starts. Validation starts at quantile
    1 - 2 * (1 - cut): a period holding the same share of events, just before the test period.
    Events must be sorted by (user, timestamp, item id): a user's events before a cut are then a
    prefix of the user's rows."""
    ts = events["timestamp"].to_numpy(dtype=np.float64)
    test_cut = float(np.quantile(ts, cut))
    valid_cut = float(np.quantile(ts, max(0.0, 1 - 2 * (1 - cut))))
    off = user_offsets(events)
    start, stop = off[:-1], off[1:]
    same_user = np.ones(len(ts), dtype=bool)
    same_user[off[:-1]] = False
    if (np.diff(ts)[same_user[1:]] < 0).any():
        raise ValueError("temporal_split: events must be sorted by (user, timestamp, item id)")

    def before(c: float) -> np.ndarray:  # per user: how many of its events are before time c
        csum = np.concatenate([[0], np.cumsum(ts < c)])
        return csum[stop] - csum[start]

    n_valid, n_test = before(valid_cut), before(test_cut)
    train = RowRanges(start[n_valid > 0], (start + n_valid)[n_valid > 0])
    # Validation: a case when the user has an event in [valid_cut, test_cut); test: one at or after test_cut.
    has_v, has_t = n_test > n_valid, stop > start + n_test
    v_ok, t_ok = has_v & (n_valid >= min_events), has_t & (n_test >= min_events)
    no_history = int((has_v & ~v_ok).sum() + (has_t & ~t_ok).sum())
    counts = {"users": len(start), "users_evaluated": int(t_ok.sum()),
              "cases_without_history_skipped": no_history,
              "valid_cut": valid_cut, "test_cut": test_cut}
    return Split(train, _cases(start[v_ok], (start + n_valid)[v_ok], events),
                 _cases(start[t_ok], (start + n_test)[t_ok], events), counts)
