"""Training config: defaults in code, overrides that fail loudly, saved with the artifact."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from model import ModelConfig


@dataclass
class TrainConfig:
    data: str = "synthetic"          # synthetic | ml-latest-small | amazon-beauty | otto-sample | diginetica-sample | <file.csv|.parquet>
    split: str = "loo"               # loo (leave-one-out) | temporal
    temporal_cut: float = 0.9        # temporal split: quantile of timestamps where test starts
    min_events: int = 3              # users with fewer events train only (counted), never evaluated
    epochs: int = 30
    batch_size: int = 128            # sequences per step
    lr: float = 1e-3
    weight_decay: float = 0.0
    sample_size: int = 2048          # candidates per batch: every target of the batch + random items
    negatives: str = "uniform"       # uniform | popularity
    logq: bool = True                # with popularity negatives: subtract log q from logits
    pretrained: str = "none"         # none | svd | path to .npy/.parquet of item vectors
    patience: int = 3                # early stopping on validation NDCG@10, in evaluations
    eval_every: int = 1              # epochs between validations
    max_eval_users: int = 0          # 0 = all validation users
    max_train_seconds: float = 0.0   # 0 = no limit; otherwise stop after the epoch that passes it
    exclude_seen: bool = True        # remove history items from the ranking
    # loo only: after early stopping picks the epoch count on validation, train a fresh model for
    # that many epochs on everything but the test events (validation events included) and export
    # it; the early-stopped model's test metrics are reported too. Test events are never trained on.
    refit_on_validation: bool = False
    seed: int = 0
    num_threads: int = 0             # 0 = torch default
    synthetic_users: int = 2000
    synthetic_items: int = 1500
    synthetic_seed: int = 0          # the marketplace's seed, apart from `seed` (training), so
                                     # several training seeds can be compared on one dataset
    version: str = ""                # model version written to metadata ("" = timestamp)
    cold_start_items: float = 0.0    # >0: hold this fraction of items out of training and report
                                     # their cold-start ranking from content (train/coldstart.py)
    model: ModelConfig = field(default_factory=ModelConfig)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {unknown}; known: {sorted(names)}")
        model = ModelConfig.from_dict(d.pop("model", {}) or {})
        return cls(model=model, **d)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def override(self, assignments: List[str]) -> "TrainConfig":
        """Apply `key=value` (or `model.key=value`) strings; values parsed as JSON when they can be."""
        d = self.to_dict()
        for a in assignments:
            if "=" not in a:
                raise ValueError(f"override must be key=value, got {a!r}")
            key, raw = a.split("=", 1)
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            target = d
            *parents, leaf = key.split(".")
            for p in parents:
                if not isinstance(target.get(p), dict):
                    raise ValueError(f"unknown config section {p!r} in {a!r}")
                target = target[p]
            if leaf not in target:
                raise ValueError(f"unknown config key {key!r}; known: {sorted(target)}")
            target[leaf] = value
        return TrainConfig.from_dict(d)


def load_config(path: Optional[str], overrides: List[str]) -> TrainConfig:
    base = TrainConfig.from_dict(json.loads(open(path).read())) if path else TrainConfig()
    return base.override(overrides)
