"""The one padding/truncation rule, used by training and (via the scripted model) by serving.

Histories are oldest-first. Longer than total_length: the oldest events are dropped (truncated at
the front). Shorter: padded with 0 at the end. The true length travels alongside.
"""
from typing import List, Tuple

import torch
from torch import Tensor


def pad_batch(seqs: List[List[int]], feats: List[List[List[int]]], total_length: int,
              num_features: int) -> Tuple[Tensor, Tensor, Tensor]:
    """seqs: B lists of item indices; feats: B lists (same lengths as seqs, or empty lists for
    "no features") of num_features ints per event.
    Returns items (B, T) long, features (B, T, F) long, lengths (B,) long."""
    b = len(seqs)
    items = torch.zeros(b, total_length, dtype=torch.long)
    features = torch.zeros(b, total_length, num_features, dtype=torch.long)
    lengths = torch.zeros(b, dtype=torch.long)
    for i in range(b):
        seq = seqs[i]
        start = max(0, len(seq) - total_length)
        n = len(seq) - start
        if n > 0:
            items[i, :n] = torch.tensor(seq[start:], dtype=torch.long)
            f = feats[i]
            if len(f) > 0:
                if len(f) != len(seq):
                    raise ValueError("features must have one row per event")
                features[i, :n] = torch.tensor(f[start:], dtype=torch.long).view(n, num_features)
        lengths[i] = n
    return items, features, lengths
