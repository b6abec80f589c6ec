"""What an item without a training event costs as the last input, on validation only.

Under the anchors' protocol the test input ends with the validation item, and 7 % of Beauty's
validation items have no training event at all (their vector is its random initial one), while a
validation input always ends with a trained item. This trains the recipe's first fit (as
bench.search does), then scores the validation sample three ways, each history followed by one
such item (drawn at random from the items without a training event, seeded):

- random_vector: as evaluated and served today, the item's untrained initial vector;
- zero_vector: that item's row set to zero (the model knows nothing of it);
- skipped: the item left out (the plain validation figure), as serving skips ids it does not know.

    python -m bench.unknown_input --config bench/configs/quality-amazon-beauty.json

Test cases are never encoded or scored here.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.provenance import git_commit, load_average
from bench.search import METRIC
from train.config import load_config
from train.evaluate import evaluate_ranking, model_scorer, summarize
from train.negatives import CandidateSampler
from train.pipeline import build_model, prepare
from train.sequences import SequentialDataset, encode_cases, seen_items, uses_features
from train.threads import resolve_threads
from train.trainer import fit

ROOT = Path(__file__).resolve().parents[1]


class _SeenPlus:
    """The cases' seen items with one more column (the appended item), so it is removed too."""

    def __init__(self, seen, extra: torch.Tensor):
        self.seen, self.extra = seen, extra

    def __len__(self) -> int:
        return len(self.seen)

    def batch(self, sl: slice) -> torch.Tensor:
        return torch.cat([self.seen.batch(sl), self.extra[sl].view(-1, 1)], dim=1)


def append_item(items: torch.Tensor, lengths: torch.Tensor, extra: torch.Tensor):
    """Right-padded histories (B, T) with one item after the last event (the oldest one leaves a
    full window), as model.pad would pad the longer history."""
    items, lengths = items.clone(), lengths.clone()
    full = lengths >= items.size(1)
    items[full] = torch.roll(items[full], -1, dims=1)
    lengths[full] -= 1
    items[torch.arange(items.size(0)), lengths] = extra
    return items, lengths + 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "unknown_input.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = dataclasses.replace(load_config(args.config, args.set), refit_on_validation=False)
    torch.set_num_threads(resolve_threads(cfg.num_threads))
    started = {"commit": git_commit(["train", "model", "bench/unknown_input.py"]), "load_average": load_average()}
    t0 = time.perf_counter()
    prep = prepare(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, prep)
    if uses_features(model):
        raise SystemExit("bench.unknown_input appends an item without its event features: id-only configs only")
    data = SequentialDataset(model, prep.cols, prep.split.train)
    sampler = CandidateSampler.from_config(cfg, len(prep.index), torch.as_tensor(prep.popularity))
    valid = prep.split.valid.subset(cfg.max_eval_users, cfg.seed)
    items, feats, lengths = encode_cases(model, prep.cols, valid)
    targets, seen = torch.as_tensor(valid.targets), seen_items(prep.cols, valid)

    def validate(m):
        with torch.no_grad():
            return summarize(evaluate_ranking(model_scorer(m), items, feats, lengths, targets, cfg.exclude_seen, seen=seen))

    hist = fit(model, data, cfg, sampler, validate, None)
    untrained = np.flatnonzero(prep.popularity == 0)
    untrained = untrained[untrained > 0]
    extra = torch.from_numpy(np.random.default_rng(cfg.seed).choice(untrained, len(valid)))
    extra = torch.where(extra == targets, int(untrained[0]), extra)  # never the target itself
    plus_items, plus_lengths = append_item(items, lengths, extra)
    plus_seen = _SeenPlus(seen, extra)

    def score(m, it, ln, sn):
        with torch.no_grad():
            out = summarize(evaluate_ranking(model_scorer(m), it, feats, ln, targets, cfg.exclude_seen, seen=sn), ci=True,
                            seed=cfg.seed)
        return {k: out[k] for k in (METRIC, METRIC + "_ci95", "HR@10", "HR@10_ci95")}

    rows = {"random_vector": score(model, plus_items, plus_lengths, plus_seen),
            "skipped": score(model, items, lengths, plus_seen)}
    with torch.no_grad():
        model.item_embedding.weight[torch.from_numpy(untrained)] = 0.0
    rows["zero_vector"] = score(model, plus_items, plus_lengths, plus_seen)
    result = {"benchmark": "unknown_input", "config_file": args.config, "overrides": args.set, **started,
              "load_average_end": load_average(), "wall_seconds": round(time.perf_counter() - t0, 1),
              "validation_users": len(valid), "items_without_training_event": int(len(untrained)),
              "best_epoch": hist.best_epoch, "epochs": len(hist.epochs), "conditions": rows,
              "note": "validation only: each history + one item without a training event; 'skipped' leaves it out"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
