"""Typed model config: defaults in code, unknown keys fail loudly, saved with every artifact."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List

# Per-event categorical features, one column each in the (B, T, F) feature tensor.
# 0 always means padding / absent; 1 means "unknown value".
FEATURE_AGE, FEATURE_GAP, FEATURE_EVENT_TYPE, FEATURE_SOURCE, FEATURE_STRENGTH = 0, 1, 2, 3, 4
NUM_EVENT_FEATURES = 5


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
    # Stage 3: time (age of each event, gap since the previous event), log2 buckets of seconds
    use_time: bool = False
    time_buckets: int = 24             # see features.time_bucket
    age_reference: str = "next"        # "now": age = now - t; "next": time until the next event
                                       # (the last event: until now), see features.encode_time_features
    # Stage 5: event context
    use_event_type: bool = False
    use_source: bool = False
    event_types: List[str] = field(default_factory=list)  # vocabulary; id = position + 2
    sources: List[str] = field(default_factory=list)
    use_strength: bool = False         # interaction strength (e.g. a rating), bucketed
    strength_edges: List[float] = field(default_factory=list)  # bucket id = 2 + #edges <= value;
                                       # empty: taken from the training events (train.pipeline.strength_edges)
    strength_buckets: int = 16         # at most this many buckets when edges come from the data
    feature_dim: int = 16              # size of each per-event feature embedding
    feature_dropout: float = 0.05      # training: P(an event feature is replaced by "unknown"), so
                                       # a field missing at serving maps to a trained default
    # Stage 4: item content. item vector = normalize(id embedding + a * ContentEncoder(content)), a
    # learned from 0; items without an id row (added by a catalogue update) get normalize(content).
    use_content: bool = False
    content_categorical: List[str] = field(default_factory=list)  # item columns; empty: auto-detect
    content_numeric: List[str] = field(default_factory=list)      # (see train/content.py)
    content_text: List[str] = field(default_factory=list)
    content_vocab: List[str] = field(default_factory=list)        # "field=value"; id = position + 2
    content_numeric_stats: List[List[float]] = field(default_factory=list)  # [mean, std] of log1p
    content_hash_buckets: int = 4096   # hashed words of text fields
    content_max_tokens: int = 16       # per item, for categorical tokens and for text words
    content_loss_weight: float = 1.0   # training: weight of a second softmax that scores content-
                                       # only candidate vectors (tastes detached), so a new item's
                                       # vector from content alone is a usable one
    id_dropout: float = 0.0            # training: P(an item's id embedding is dropped), the
                                       # DropoutNet way to the same end (slows warm learning)

    def __post_init__(self):
        if self.age_reference not in ("now", "next"):
            raise ValueError(f"age_reference must be 'now' or 'next', got {self.age_reference!r}")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {unknown}; known: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)
