"""Per-event feature encoding shared by training and serving (scripted into the model)."""
import math
from typing import List

import torch


def time_bucket(seconds: float, num_buckets: int) -> int:
    """Log2-scaled bucket of a duration. 0 is padding, 1 "unknown" (a NaN timestamp, or a negative
    duration: events out of order), 2 under a minute, then one bucket per doubling of minutes,
    capped at num_buckets - 1."""
    if math.isnan(seconds) or seconds < 0.0:  # math.isnan: TorchScript folds `x != x` to False
        return 1
    if seconds < 60.0:
        return 2
    b = 3 + int(math.floor(math.log(seconds / 60.0) / math.log(2.0)))
    return min(b, num_buckets - 1)


def encode_time_features(timestamps: List[float], now: float, num_buckets: int,
                         until_next: bool = False) -> List[List[int]]:
    """For each event: [age bucket, gap bucket (t - previous t; the first event: 1, unknown)].

    Age is `now - t` (until_next=False), or with until_next=True the time until the *next* event,
    `t[i+1] - t[i]`, and `now - t` for the last event. Either way the last event's age is the time
    from it to the moment of prediction; "until next" gives every earlier position the same meaning
    relative to the target it predicts in training (the next event), which one `now` cannot."""
    out: List[List[int]] = []
    prev = -1.0
    n = len(timestamps)
    for i in range(n):
        t = timestamps[i]
        ref = timestamps[i + 1] if until_next and i + 1 < n else now
        age = time_bucket(ref - t, num_buckets)
        gap = 1 if i == 0 else time_bucket(t - prev, num_buckets)
        out.append([age, gap])
        prev = t
    return out


def strength_bucket(value: float, edges: List[float]) -> int:
    """Bucket of an interaction strength (e.g. a rating): 1 "unknown" for NaN (not given), else
    2 + the number of edges <= value (edges ascending)."""
    if math.isnan(value):
        return 1
    b = 2
    for e in edges:
        if value >= e:
            b += 1
    return b
