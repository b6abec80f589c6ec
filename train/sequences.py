"""SequentialDataset: padded training windows and evaluation histories, built with the model's own
padding (`SequenceModel.pad`) and event encoding (`SequenceModel.encode_events`).

Training: a user's event rows e_1..e_n give inputs e_1..e_{n-1} and targets e_2..e_n. Sequences
longer than total_length are cut into windows ending at the last event, so no event is wasted.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from model import SequenceModel

from .split import Cases


class EventColumns:
    """The event table as arrays, so encoding 1M events is not a pandas row loop."""

    def __init__(self, events: pd.DataFrame):
        n = len(events)
        self.items = events["item_idx"].to_numpy(dtype=np.int64)
        self.timestamps = events["timestamp"].to_numpy(dtype=np.float64)
        self.event_types = (events["event_type"].astype(str).to_numpy() if "event_type" in events
                            else np.full(n, "", dtype=object))
        self.sources = (events["source"].astype(str).to_numpy() if "source" in events
                        else np.full(n, "", dtype=object))
        self.strengths = (events["strength"].to_numpy(dtype=np.float64) if "strength" in events
                          else np.full(n, np.nan))

    def features(self, model: SequenceModel, rows: np.ndarray, now: float) -> List[List[int]]:
        if not (model.use_time or model.use_event_type or model.use_source or model.use_strength):
            return []
        return model.encode_events(self.timestamps[rows].tolist(), self.event_types[rows].tolist(),
                                   self.sources[rows].tolist(), self.strengths[rows].tolist(), float(now))


class SequentialDataset(torch.utils.data.Dataset):
    """Training windows: (items (T,), features (T, F), targets (T,), length)."""

    def __init__(self, model: SequenceModel, cols: EventColumns, user_rows: List[np.ndarray]):
        t = model.total_length
        seqs, feats, targets = [], [], []
        for rows in user_rows:
            end = len(rows)
            while end >= 2:
                start = max(0, end - t - 1)
                window = rows[start:end]
                # Age features are relative to the time of the window's last target.
                f = cols.features(model, window[:-1], cols.timestamps[window[-1]])
                seqs.append(cols.items[window[:-1]].tolist())
                feats.append(f)
                targets.append(cols.items[window[1:]].tolist())
                end = start + 1  # the next window's last target is this window's first input
        self.items, self.features, self.lengths = model.pad(seqs, feats)
        self.targets, _, _ = model.pad(targets, [[] for _ in targets])
        self.num_events = int(self.lengths.sum())

    def __len__(self) -> int:
        return self.items.size(0)

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.items[i], self.features[i], self.targets[i], self.lengths[i]


def encode_cases(model: SequenceModel, cols: EventColumns, cases: Cases) -> Tuple[Tensor, Tensor, Tensor]:
    """Evaluation histories padded exactly as serving pads them (same model.pad)."""
    seqs = [cols.items[h].tolist() for h in cases.histories]
    feats = [cols.features(model, h, now) for h, now in zip(cases.histories, cases.now)]
    return model.pad(seqs, feats)
