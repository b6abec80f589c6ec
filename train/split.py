"""Splits of a sorted event log into training sequences and evaluation cases.

Every user's events are in order (user, timestamp, item id). Two protocols:
- leave-one-out: last event = test target, the one before = validation target, the rest trains;
- temporal: one global cut; events before it train, each user's first event after it is the test
  target (history = everything before it), likewise for validation at an earlier cut.
Users too short to evaluate are not dropped silently: they train only, and are counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import pandas as pd


@dataclass
class Cases:
    """Evaluation cases: row i predicts targets[i] from event rows histories[i] (indices into the
    event table), at time now[i]."""
    histories: List[np.ndarray]
    targets: np.ndarray
    now: np.ndarray
    users: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, n: int, seed: int = 0) -> "Cases":
        if n <= 0 or n >= len(self):
            return self
        pick = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return Cases([self.histories[i] for i in pick], self.targets[pick], self.now[pick], self.users[pick])


@dataclass
class Split:
    train: List[np.ndarray]             # per user: event row indices used for training, in order
    valid: Cases
    test: Cases
    counts: Dict[str, int] = field(default_factory=dict)
    # loo: per user, every event but the test target (train + validation), for refitting
    train_with_valid: List[np.ndarray] = field(default_factory=list)


def _user_groups(events: pd.DataFrame) -> List[np.ndarray]:
    users = events["user_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    return np.split(np.arange(len(events)), starts[1:])


def _cases(rows: List[np.ndarray], targets: List[int], events: pd.DataFrame) -> Cases:
    items = events["item_idx"].to_numpy()
    ts = events["timestamp"].to_numpy(dtype=np.float64)
    users = events["user_id"].to_numpy()
    t = np.asarray(targets, dtype=np.int64)
    return Cases(rows, items[t] if len(t) else np.zeros(0, np.int64),
                 ts[t] if len(t) else np.zeros(0), users[t] if len(t) else np.zeros(0, users.dtype))


def leave_one_out(events: pd.DataFrame, min_events: int = 3) -> Split:
    """Events must be sorted by (user, timestamp, item id) and carry `item_idx`."""
    min_events = max(min_events, 3)
    train, vh, vt, th, tt, refit = [], [], [], [], [], []
    short = 0
    for rows in _user_groups(events):
        if len(rows) < min_events:
            short += 1
            train.append(rows)
            refit.append(rows)
            continue
        train.append(rows[:-2])
        refit.append(rows[:-1])
        vh.append(rows[:-2]); vt.append(rows[-2])
        th.append(rows[:-1]); tt.append(rows[-1])
    counts = {"users": len(train), "users_evaluated": len(tt), "users_too_short_train_only": short}
    return Split(train, _cases(vh, vt, events), _cases(th, tt, events), counts, refit)


def temporal_split(events: pd.DataFrame, cut: float = 0.9, min_events: int = 1) -> Split:
    """cut: quantile of all timestamps where the test period starts. Validation starts at quantile
    1 - 2 * (1 - cut): a period holding the same share of events, just before the test period."""
    ts = events["timestamp"].to_numpy(dtype=np.float64)
    test_cut = float(np.quantile(ts, cut))
    valid_cut = float(np.quantile(ts, max(0.0, 1 - 2 * (1 - cut))))
    train, vh, vt, th, tt = [], [], [], [], []
    no_history = 0
    for rows in _user_groups(events):
        t = ts[rows]
        before_valid = rows[t < valid_cut]
        before_test = rows[t < test_cut]
        if len(before_valid):
            train.append(before_valid)
        for hist, cut_rows, hs, tg in ((before_valid, rows[(t >= valid_cut) & (t < test_cut)], vh, vt),
                                       (before_test, rows[t >= test_cut], th, tt)):
            if len(cut_rows) == 0:
                continue
            if len(hist) < min_events:
                no_history += 1
                continue
            hs.append(hist); tg.append(cut_rows[0])
    counts = {"users": len(_user_groups(events)), "users_evaluated": len(tt),
              "cases_without_history_skipped": no_history,
              "valid_cut": valid_cut, "test_cut": test_cut}
    return Split(train, _cases(vh, vt, events), _cases(th, tt, events), counts)
