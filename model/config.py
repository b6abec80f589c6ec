"""Typed model config: defaults in code, unknown keys fail loudly, saved with every artifact."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List

# Per-event categorical features, one column each in the (B, T, F) feature tensor.
# 0 always means padding / absent; 1 means "unknown value".
FEATURE_AGE, FEATURE_GAP, FEATURE_EVENT_TYPE, FEATURE_SOURCE = 0, 1, 2, 3
NUM_EVENT_FEATURES = 4


@dataclass
class ModelConfig:
    num_items: int = 0                 # N; item indices are 1..N, 0 is padding
    embedding_dim: int = 64            # item vector size D
    hidden_dim: int = 128              # LSTM state size
    num_layers: int = 1
    dropout: float = 0.1
    total_length: int = 50             # histories are padded/truncated to this many events
    freeze_item_vectors: bool = False  # seed stage 1: fixed (pretrained) item representation
    init_scale: float = 10.0           # initial |w|: cosine models want a temperature of 10-30
    # Stage 3: time (age of each event relative to `now`, gap since the previous event)
    use_time: bool = False
    time_buckets: int = 24             # log2-scaled buckets of seconds, see features.time_bucket
    # Stage 5: event context
    use_event_type: bool = False
    use_source: bool = False
    event_types: List[str] = field(default_factory=list)  # vocabulary; id = position + 2
    sources: List[str] = field(default_factory=list)
    feature_dim: int = 16              # size of each per-event feature embedding

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {unknown}; known: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)
