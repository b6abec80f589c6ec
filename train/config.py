"""Training config: defaults in code, overrides that fail loudly, saved with the artifact.

Every value is checked at construction (type from the annotation, range from TRAIN_RULES and
model.config.MODEL_RULES); from_dict, override and load_config raise UserError naming the key.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from handler.seqrec_index import IndexSpec
from model import ModelConfig
from model.config import PROBABILITY, ConfigError, Rule, check_fields, check_keys

from .errors import UserError


@dataclass
class TrainConfig:
    data: str = "synthetic"          # synthetic | ml-latest-small | amazon-beauty | otto-sample | diginetica-sample | <file.csv|.parquet>
                                     # | <directory of .parquet parts> (DIR/events/part-*.parquet, DIR/items.parquet)
    split: str = "loo"               # loo (leave-one-out) | temporal
    temporal_cut: float = 0.9        # temporal split: quantile of timestamps where test starts
    min_events: int = 3              # users with fewer events train only (counted), never evaluated
    epochs: int = 30
    batch_size: int = 128            # sequences per step
    lr: float = 1e-3
    lr_decay: float = 1.0            # reduce on plateau: lr *= lr_decay after each validation that sets no
                                     # new best (1 = constant); validation, not a schedule, decides when
    weight_decay: float = 0.0        # Adam's L2; only with item_optimizer=adam (the sparse ones have none)
    item_optimizer: str = "sparse_adam"  # sparse_adam: sparse item-table gradient, Adam with dense Adam's
                                     # moves caught up (a step costs the same at any catalogue size) |
                                     # lazy_adam: torch SparseAdam | adam: the dense reference (train/optim.py)
    sample_size: int = 2048          # candidates per batch: every target of the batch + random items;
                                     # 0 = every item (full softmax: a step costs positions x items)
    negatives: str = "uniform"       # uniform | popularity
    logq: bool = True                # with popularity negatives: subtract log q from logits
    logq_correction: str = "draw"    # draw: log q of one draw | inclusion: log P(in the step's
                                     # candidate set), the exact one for a set (train/negatives.py)
    pretrained: str = "none"         # none | svd | path to .npy/.parquet of item vectors
    svd_window: int = 3              # pretrained=svd: items up to this many events apart co-occur
    patience: int = 3                # early stopping on validation NDCG@10, in evaluations
    eval_every: int = 1              # epochs between validations
    max_eval_users: int = 0          # 0 = all validation users
    # More test users than this: a seeded random sample of them (bootstrap CIs over the sample;
    # summary.json's data.test_sample says how many of how many). 100k keeps every bundled dataset
    # whole; at 2M items it costs ~15 min on 2 cores (model and popularity). 0 = all.
    max_test_users: int = 100_000
    # 0 = no limit; otherwise stop after the epoch that passes it. A result that depends on how busy
    # the machine was: no published config (bench/configs, train/configs) sets it.
    max_train_seconds: float = 0.0
    exclude_seen: bool = True        # remove history items from the ranking
    # loo only: after early stopping picks the epoch count on validation, train a fresh model for
    # that many epochs on everything but the test events (validation events included) and export
    # it; the early-stopped model's test metrics are reported too. Test events are never trained on.
    refit_on_validation: bool = False
    seed: int = 0
    num_threads: int = 0             # 0 = auto: $OMP_NUM_THREADS if set, else usable cores // processes
                                     # on this node (train/threads.py)
    progress_seconds: float = 30.0   # not on a terminal: a progress line this often (on one: tqdm)
    synthetic_users: int = 2000
    synthetic_items: int = 1500
    synthetic_seed: int = 0          # the marketplace's seed, apart from `seed` (training), so
                                     # several training seeds can be compared on one dataset
    version: str = ""                # model version written to metadata ("" = timestamp)
    index: str = "auto"              # candidate index of the export: auto (pq from 100k items) | none |
                                     # hnsw[:M=32,ef_construction=200,ef_search=64,bits=32|16|8] | ivf[:nlist=1024,nprobe=32]
                                     # | pq[:m=32,shortlist=1000]
    cold_start_items: float = 0.0    # >0: hold this fraction of items out of training and report
                                     # their cold-start ranking from content (train/coldstart.py)
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self):
        check_fields(self, TRAIN_RULES)
        try:
            spec = IndexSpec.parse(self.index)
        except ValueError as e:
            raise ConfigError("index", str(e)) from None
        if not isinstance(self.model, ModelConfig):
            raise ConfigError("model", f"must be a ModelConfig, got {self.model!r}")
        if spec.kind == "pq" and self.model.embedding_dim % spec.knobs["m"]:  # refused now, not after training
            raise ConfigError("index", f"pq: m={spec.knobs['m']} must divide model.embedding_dim "
                              f"{self.model.embedding_dim}")
        if self.logq_correction != "draw" and not (self.negatives == "popularity" and self.logq):
            raise ConfigError("logq_correction", f"{self.logq_correction!r} applies to popularity negatives "
                              f"with logq=true only (negatives={self.negatives!r}, logq={self.logq})")
        if self.refit_on_validation and self.split != "loo":
            raise ConfigError("refit_on_validation", f"needs split='loo', got split={self.split!r}")
        if self.sample_size == 0 and self.negatives != "uniform":
            raise ConfigError("sample_size", f"0 (every item a candidate) samples nothing, so negatives must be "
                                             f"'uniform', got negatives={self.negatives!r}")
        if self.lr_decay > 1:
            raise ConfigError("lr_decay", f"must be a finite number in (0, 1] (1 keeps lr constant), got {self.lr_decay!r}")
        if self.weight_decay > 0 and self.item_optimizer != "adam":
            raise ConfigError("weight_decay", f"needs item_optimizer='adam' (the sparse item optimizers "
                                              f"have no weight decay), got {self.weight_decay!r}")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """Raises UserError naming the first bad key, dotted below model (model.embedding_dim)."""
        try:
            d = dict(d)
            check_keys(cls, d)
            model = d.pop("model", None) or {}
            if not isinstance(model, dict):
                raise ConfigError("model", f"must be an object of model keys, got {model!r}")
            try:
                model = ModelConfig.from_dict(model)
            except ConfigError as e:
                raise e.within("model") from None
            return cls(model=model, **d)
        except ConfigError as e:  # model/ cannot raise train's UserError: translated here, once
            raise UserError(str(e)) from None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def override(self, assignments: List[str]) -> "TrainConfig":
        """Apply `key=value` (or `model.key=value`) strings; values parsed as JSON when they can be,
        except that a string field takes the text as given (version=2.0 is the string "2.0")."""
        d = self.to_dict()
        for a in assignments:
            if "=" not in a:
                raise UserError(f"override must be KEY=VALUE, got {a!r}")
            key, raw = a.split("=", 1)
            value = parse_value(raw)
            target = d
            *parents, leaf = key.split(".")
            for p in parents:
                if not isinstance(target.get(p), dict):
                    raise UserError(f"{key}: {p!r} is not a config section (the only one is 'model')")
                target = target[p]
            if leaf not in target:  # from_dict names it, with the closest known key
                target[leaf] = value
                continue
            if isinstance(target[leaf], str) and not isinstance(value, str):
                value = raw
            target[leaf] = value
        return TrainConfig.from_dict(d)


def parse_value(raw: str) -> Any:
    """An override's value: JSON when it parses (0.5, true, "x"), else the text (popularity)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def load_config(path: Optional[str], overrides: List[str]) -> TrainConfig:
    """The JSON file's config (or the defaults), then the overrides; UserError for a missing or
    malformed file."""
    if not path:
        return TrainConfig().override(overrides)
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"--config: no such file {path!r}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--config: cannot read {path!r}: {e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"--config: {path!r} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"--config: {path!r} must hold a JSON object of config keys, got {type(d).__name__}")
    return TrainConfig.from_dict(d).override(overrides)


def config_diff(a: Dict[str, Any], b: Dict[str, Any], prefix: str = "") -> List[str]:
    """Dotted keys (model.hidden_dim) whose values differ between two config dicts, or that only
    one of them has."""
    out: List[str] = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, _MISSING), b.get(k, _MISSING)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


_MISSING = object()
# Ranges of the fields that have one (every field's type is checked from its annotation).
TRAIN_RULES: Dict[str, Rule] = {
    "split": Rule(choices=("loo", "temporal")),
    "temporal_cut": Rule(low=0.0, high=1.0, low_open=True),
    "min_events": Rule(low=3),  # leave-one-out needs a history, a validation and a test event
    "epochs": Rule(low=1), "batch_size": Rule(low=1), "lr": Rule(low=0.0, low_open=True),
    "lr_decay": Rule(low=0.0, low_open=True),  # and <= 1: __post_init__
    "weight_decay": Rule(low=0.0), "sample_size": Rule(low=0),  # 0: full softmax
    "negatives": Rule(choices=("uniform", "popularity")),
    "logq_correction": Rule(choices=("draw", "inclusion")),
    "item_optimizer": Rule(choices=("sparse_adam", "lazy_adam", "adam")),
    "progress_seconds": Rule(low=0.0, low_open=True),
    "patience": Rule(low=1), "eval_every": Rule(low=1), "max_eval_users": Rule(low=0),
    "max_test_users": Rule(low=0),
    "max_train_seconds": Rule(low=0.0), "seed": Rule(low=0), "num_threads": Rule(low=0),
    "synthetic_users": Rule(low=1), "synthetic_items": Rule(low=12),  # train.synthetic: 12 categories
    "synthetic_seed": Rule(low=0), "cold_start_items": PROBABILITY, "svd_window": Rule(low=1),
}
