"""Per-event feature encoding shared by training and serving (scripted into the model)."""
import math
from typing import List

import torch


def time_bucket(seconds: float, num_buckets: int) -> int:
    """Log2-scaled bucket of a duration: 1 = under a minute (or negative/unknown order),
    then one bucket per doubling of minutes, capped at num_buckets - 1. 0 is reserved for padding."""
    if seconds != seconds or seconds < 60.0:  # NaN or under a minute
        return 1
    b = 2 + int(math.floor(math.log(seconds / 60.0) / math.log(2.0)))
    return min(b, num_buckets - 1)


def encode_time_features(timestamps: List[float], now: float, num_buckets: int) -> List[List[int]]:
    """For each event: [age bucket (now - t), gap bucket (t - previous t; the first event gets 1)]."""
    out: List[List[int]] = []
    prev = -1.0
    for i in range(len(timestamps)):
        t = timestamps[i]
        age = time_bucket(now - t, num_buckets)
        gap = 1 if i == 0 else time_bucket(t - prev, num_buckets)
        out.append([age, gap])
        prev = t
    return out
