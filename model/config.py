"""Typed model config: defaults in code, unknown keys and out-of-range values fail loudly, saved
with every artifact. `check_fields` is the one validation helper, shared with train.TrainConfig."""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

# Per-event categorical features, one column each in the (B, T, F) feature tensor.
# 0 always means padding / absent; 1 means "unknown value".
FEATURE_AGE, FEATURE_GAP, FEATURE_EVENT_TYPE, FEATURE_SOURCE, FEATURE_STRENGTH = 0, 1, 2, 3, 4
NUM_EVENT_FEATURES = 5


class ConfigError(ValueError):
    """A config value of the wrong type or out of its range, or an unknown key; `key` names it,
    dotted below a section (model.embedding_dim)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key} {problem}")
        self.key, self.problem = key, problem

    def within(self, section: str) -> "ConfigError":
        return ConfigError(f"{section}.{self.key}", self.problem)


@dataclass(frozen=True)
class Rule:
    """What a field allows besides its type: a range, or a list of choices."""
    low: Optional[float] = None       # inclusive, unless low_open
    high: Optional[float] = None      # exclusive: probabilities live in [0, 1)
    low_open: bool = False
    choices: Tuple[str, ...] = ()

    def allows(self, v: Any) -> bool:
        if self.choices:
            return v in self.choices
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or v < self.high

    def describe(self, hint: Any) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        kind = _type_name(hint)
        if self.high is not None:
            return f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g})"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        return kind


_TYPE_NAMES = {int: ("an integer", "integers"), float: ("a finite number", "finite numbers"),
               bool: ("true or false", "booleans"), str: ("a string", "strings")}


def _type_name(hint: Any, plural: bool = False) -> str:
    if typing.get_origin(hint) is list:
        inner = _type_name(typing.get_args(hint)[0], plural=True)
        return f"lists of {inner}" if plural else f"a list of {inner}"
    return _TYPE_NAMES[hint][plural]


def _type_ok(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_type_ok(v, typing.get_args(hint)[0]) for v in value)
    if isinstance(value, bool):  # bool is an int subclass: true is not an epoch count
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, hint)


def check_fields(config: Any, rules: Dict[str, Rule]) -> None:
    """Check every field of a config dataclass against its annotated type and its rule; nested
    dataclass fields check themselves. Ints given for floats become floats. Raises ConfigError."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        hint, value = hints[f.name], getattr(config, f.name)
        if dataclasses.is_dataclass(hint):
            continue
        rule = rules.get(f.name, Rule())
        if not _type_ok(value, hint) or not rule.allows(value):
            raise ConfigError(f.name, f"must be {rule.describe(hint)}, got {value!r}")
        if hint is float:
            setattr(config, f.name, float(value))


def check_keys(cls: Any, d: Dict[str, Any]) -> None:
    """Every key of `d` must be a field of the dataclass `cls`; raises ConfigError for the first
    that is not, with the closest known name."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in sorted(set(d) - set(names)):
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(names))}"
        raise ConfigError(key, f"is not a config key ({hint})")


@dataclass
class ModelConfig:
    num_items: int = 0                 # N; item indices are 1..N, 0 is padding
    embedding_dim: int = 64            # item vector size D
    hidden_dim: int = 128              # LSTM state size
    num_layers: int = 1
    lstm_bias: bool = False            # gate biases in the LSTM; the seed's LSTM has none
    # The taste adds the last event's item vector to the LSTM's projection (a skip connection, as a
    # Transformer's residual stream keeps its input): the next item is often a neighbour of the last
    # one, which the LSTM otherwise has to carry through its hidden state. Off: the seed's model.
    residual: bool = False
    # A causal attention read-out over the LSTM's states (NARM's local encoder): each position's
    # taste is projected from its state and an attention-weighted sum of the states so far, so an
    # event several steps back reaches the taste directly, not only through the last state.
    attention: bool = False
    # Training: each position's logits are cosine x |w| x s, s = softplus(a learned linear map of the
    # LSTM state), starting at 1, so a position can be as sure (or unsure) as its history warrants
    # instead of every softmax sharing one temperature. A positive s per query leaves the ranking
    # within a request as the cosine gives it, so serving and evaluation need nothing.
    position_temperature: bool = False
    # A learned bias per item on the logit (cosine x |w| + bias): a cosine cannot say how likely an
    # item is overall (a dot product can, through vector norms), only which way it points. Ranking
    # then needs the bias too (model.ranking_rows); export refuses it until serving scores with it.
    item_bias: bool = False
    dropout: float = 0.1
    # Training: P(an input event's whole item vector is zeroed, as padding is), so a taste cannot
    # lean on any one past item (dropout above zeroes single coordinates).
    item_input_dropout: float = 0.0
    total_length: int = 50             # histories are padded/truncated to this many events
    freeze_item_vectors: bool = False  # seed stage 1: fixed (pretrained) item representation
    init_scale: float = 10.0           # initial |w|: cosine models want a temperature of 10-30
    learn_temperature: bool = True     # False: |w| stays init_scale (a learned one climbs as it overfits)
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
        check_fields(self, MODEL_RULES)
        if self.strength_edges != sorted(self.strength_edges):
            raise ConfigError("strength_edges", f"must be ascending, got {self.strength_edges}")
        if self.position_temperature and self.item_bias:  # ranking_rows cannot hold a per-query factor
            raise ConfigError("position_temperature", "cannot be combined with item_bias (the ranking "
                              "would depend on each query's factor)")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        check_keys(cls, d)
        return cls(**d)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# Ranges of the fields that have one (every field's type is checked from its annotation).
PROBABILITY = Rule(low=0.0, high=1.0)
MODEL_RULES: Dict[str, Rule] = {
    "num_items": Rule(low=0), "embedding_dim": Rule(low=1), "hidden_dim": Rule(low=1),
    "num_layers": Rule(low=1), "dropout": PROBABILITY, "item_input_dropout": PROBABILITY,
    "total_length": Rule(low=1),
    "init_scale": Rule(low=0.0, low_open=True),
    "time_buckets": Rule(low=3),  # 0 padding, 1 unknown, 2 under a minute (features.time_bucket)
    "age_reference": Rule(choices=("now", "next")),
    "strength_buckets": Rule(low=1), "feature_dim": Rule(low=1), "feature_dropout": PROBABILITY,
    "content_hash_buckets": Rule(low=1), "content_max_tokens": Rule(low=1),
    "content_loss_weight": Rule(low=0.0), "id_dropout": PROBABILITY,
}
