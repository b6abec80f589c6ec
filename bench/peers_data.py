"""The project's own split handed to a peer library, and the peer's scores handed back to the
project's evaluator. No peer library is imported here: tests/test_peers.py runs it in the normal
suite.

    from bench.peers_data import peer_split, evaluate_factors
    ps = peer_split("amazon-beauty")          # train.pipeline.prepare + split.leave_one_out
    ps.train_frame()                          # what the peer trains on: all events but the last two
    per_case = evaluate_factors(user_vecs, item_rows, ps.test_eval, known_items)

Item ids handed to a peer are the project's item indices (1..N), user ids the project's user ids,
and each event's order is its row in the project's sorted event table (user, timestamp, item id),
so a library that sorts by time reproduces the project's sequence order exactly, ties included.

Evaluation goes through train.evaluate.evaluate_ranking unchanged: full ranking over every item,
the case's history (its last `history_length` events, as the project's model pads it) removed,
ties counted against the target. A peer scores a case by a query vector and item rows
(score = query . row, as SASRec and ALS both do); an item the peer never saw in training has no
row and is left out of the ranking (`scorable`), and a target there is never a hit.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Dict, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from train.config import TrainConfig
from train.evaluate import Scorer, evaluate_ranking, metrics_from_ranks, popularity_scorer
from train.pipeline import Prepared, prepare
from train.sequences import SeenItems, encode_cases, seen_items
from train.split import Cases, RowRanges


@dataclass
class EvalCases:
    """Cases as the project's evaluator takes them: padded histories (B, T), lengths, targets."""
    cases: Cases
    items: torch.Tensor    # (B, T) int64, the last T history items, 0-padded as SequenceModel.pad does
    lengths: torch.Tensor  # (B,)
    targets: torch.Tensor  # (B,)
    seen: SeenItems        # each case's whole history: what exclude_seen removes

    @property
    def users(self) -> np.ndarray:
        return self.cases.users

    def __len__(self) -> int:
        return len(self.cases)


def eval_cases(prep: Prepared, cases: Cases, history_length: int) -> EvalCases:
    """The project's own padding (train.sequences.encode_cases) for a model of this history length
    and no event features."""
    shape = SimpleNamespace(total_length=history_length, num_features=0, use_time=False,
                            use_event_type=False, use_source=False, use_strength=False)
    items, _, lengths = encode_cases(shape, prep.cols, cases)
    return EvalCases(cases, items, lengths, torch.as_tensor(cases.targets, dtype=torch.long),
                     seen_items(prep.cols, cases))


@dataclass
class PeerSplit:
    name: str
    prep: Prepared
    valid_eval: EvalCases   # the validation sample early stopping reads
    test_eval: EvalCases    # every test case

    @property
    def n_items(self) -> int:
        return len(self.prep.index)

    def frame(self, rows: RowRanges) -> pd.DataFrame:
        """Events of these row ranges as (user_id, item, order): order = row in the event table."""
        flat = rows.flat()
        ev = self.prep.events
        return pd.DataFrame({"user_id": ev["user_id"].to_numpy()[flat],
                             "item": self.prep.cols.items[flat].astype(np.int64),
                             "order": flat.astype(np.int64)})

    def train_frame(self) -> pd.DataFrame:
        """What a peer trains on: every event but each evaluated user's last two."""
        return self.frame(self.prep.split.train)

    def test_input_frame(self) -> pd.DataFrame:
        """Test histories: train + validation events (everything but the test target)."""
        return self.frame(self.prep.split.train_with_valid)

    def counts(self) -> Dict[str, int]:
        return {"events": len(self.prep.events), "items": self.n_items,
                "users": int(self.prep.events["user_id"].nunique()),
                "training_events": int(self.prep.split.train.lengths.sum()),
                "valid_users": len(self.valid_eval), "test_users": len(self.test_eval),
                **{k: v for k, v in self.prep.split.counts.items() if k != "users"}}


def peer_split(data: str, max_eval_users: int = 10_000, seed: int = 0, min_events: int = 3,
               history_length: int = 50) -> PeerSplit:
    """The leave-one-out split train.pipeline.prepare makes for `data` (split=loo), the same seeded
    validation sample the project's training validates on, and every test case."""
    cfg = TrainConfig(data=data, split="loo", min_events=min_events, seed=seed, max_eval_users=max_eval_users)
    prep = prepare(cfg)
    valid = prep.split.valid.subset(cfg.max_eval_users, cfg.seed)
    return PeerSplit(data, prep, eval_cases(prep, valid, history_length),
                     eval_cases(prep, prep.split.test, history_length))


def evaluate_factors(queries: np.ndarray, rows: np.ndarray, ev: EvalCases,
                     known: Optional[np.ndarray] = None, exclude_seen: bool = True) -> Dict[str, np.ndarray]:
    """Per-case metrics of score = queries[i] . rows[item] through the project's evaluator.
    queries (B, D): one per case of `ev`, in its order; rows (N+1, D) indexed by item index
    (row 0 = padding, never ranked); known (N+1,) bool: items the peer can score."""
    q = torch.as_tensor(np.ascontiguousarray(queries), dtype=torch.float32)
    r = torch.as_tensor(np.ascontiguousarray(rows), dtype=torch.float32)
    if q.size(0) != len(ev) or r.size(1) != q.size(1):
        raise ValueError(f"queries {tuple(q.shape)} for {len(ev)} cases, rows {tuple(r.shape)}")
    # The evaluator hands query() the batch's slice of `features`: the case numbers, so a query
    # is looked up per case rather than computed from the history.
    case_no = torch.arange(len(ev)).view(-1, 1, 1)
    scorer = Scorer(r, lambda items, features, lengths: q[features[:, 0, 0]])
    scorable = None if known is None else torch.as_tensor(known, dtype=torch.bool)
    return evaluate_ranking(scorer, ev.items, case_no, ev.lengths, ev.targets, exclude_seen, scorable=scorable,
                            seen=ev.seen)


def evaluate_popularity(split: PeerSplit, ev: EvalCases) -> Dict[str, np.ndarray]:
    """The project's popularity baseline (training counts) on the same cases: a sanity anchor."""
    no_features = torch.zeros(len(ev), 1, 1, dtype=torch.long)
    return evaluate_ranking(popularity_scorer(split.prep.popularity), ev.items, no_features, ev.lengths, ev.targets,
                            seen=ev.seen)


def ranks_from_topk(topk: Sequence[Sequence[int]], targets: np.ndarray, n_items: int) -> np.ndarray:
    """0-based rank of each target in a peer's own top-k list (seen items already filtered by the
    peer); a target not in the list gets n_items, a miss at every cut-off up to k."""
    out = np.full(len(targets), n_items, dtype=np.int64)
    for i, (rec, t) in enumerate(zip(topk, targets)):
        hit = np.flatnonzero(np.asarray(rec) == t)
        if len(hit):
            out[i] = hit[0]
    return out


def topk_metrics(topk: Sequence[Sequence[int]], targets: np.ndarray, n_items: int, ks=(1, 5, 10)) -> Dict[str, np.ndarray]:
    """The project's metric definitions (train.evaluate.metrics_from_ranks) on a peer's top-k lists."""
    return metrics_from_ranks(ranks_from_topk(topk, targets, n_items), ks)
