"""Cold-start evaluation: items held out of training entirely (every event on them removed before the
item index is built), then added to the catalogue from their content alone, exactly as
`python -m train.catalog` adds new listings, and ranked for the users who went on to touch them.

    python -m train --data synthetic --out artifacts/cold --set model.use_content=true cold_start_items=0.1

Cases: per user, the last event on a held-out item that has at least one earlier event; history =
every earlier event (warm and held-out items alike), now = the event's time. Two rankings:
- full catalogue (trained + held-out items): can the new item compete with trained ones?
- held-out items only: does content pick the right new item among the new ones?
Baselines on the same cases: popularity (training counts: held-out items have none, so it never
ranks them above a trained item), random (uniform scores, seeded), and content popularity (a new
item scores the mean training popularity of trained items sharing its categorical values). The
baselines break ties at random (the evaluator counts ties against the target, which would make a
baseline that scores many items alike look worse than it is); the model's scores do not tie.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Dict, Tuple

import numpy as np
import pandas as pd
import torch

from handler.seqrec_artifact import ItemIndex
from model import ModelConfig, SequenceModel

from .content import encode_content
from .evaluate import evaluate_ranking, fixed_scorer, model_scorer, summarize
from .sequences import EventColumns, encode_cases, seen_items
from .split import Cases, RowRanges, user_offsets

log = logging.getLogger(__name__)


def hold_out_items(events: pd.DataFrame, fraction: float, seed: int = 0) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """-> (events on the other items, events on a random `fraction` of the items)."""
    if not 0 < fraction < 1:
        raise ValueError(f"cold_start_items must be in (0, 1), got {fraction}")
    ids = np.sort(pd.unique(events["item_id"]))
    rng = np.random.default_rng(seed + 7919)  # not the split's or the sampler's stream
    cold = rng.choice(ids, max(1, int(round(fraction * len(ids)))), replace=False)
    is_cold = events["item_id"].isin(cold).to_numpy()
    return (events[~is_cold].reset_index(drop=True), events[is_cold].reset_index(drop=True))


def _cases(events: pd.DataFrame, first_cold: int) -> Cases:
    """Per user: the last event on a held-out item (index >= first_cold) with an earlier event."""
    idx = events["item_idx"].to_numpy()
    off = user_offsets(events)
    user = np.repeat(np.arange(len(off) - 1), np.diff(off))
    rows = np.flatnonzero((idx >= first_cold) & (np.arange(len(idx)) > off[user]))
    last = rows[np.r_[user[rows][1:] != user[rows][:-1], True]] if len(rows) else rows  # each user's last
    ts = events["timestamp"].to_numpy(np.float64)
    return Cases(RowRanges(off[user[last]], last), idx[last].astype(np.int64), ts[last],
                 events["user_id"].to_numpy()[last])


def _content_popularity(model: SequenceModel, popularity: np.ndarray) -> np.ndarray:
    """Per item row: mean over its categorical values of the mean training popularity of trained
    items carrying that value (0 for items without categorical content)."""
    cat = model.item_categorical.numpy()
    n = model.num_id_items
    vocab = int(cat.max()) + 1
    total, count = np.zeros(vocab), np.zeros(vocab)
    for j in range(cat.shape[1]):
        np.add.at(total, cat[1:n + 1, j], popularity[1:n + 1])
        np.add.at(count, cat[1:n + 1, j], 1)
    mean = np.divide(total, count, out=np.zeros(vocab), where=count > 0)
    mean[0] = 0.0
    present = (cat > 0).sum(axis=1)
    return np.divide(mean[cat].sum(axis=1), present, out=np.zeros(len(cat)), where=present > 0)


def evaluate_cold_start(model: SequenceModel, mc: ModelConfig, index: ItemIndex, events: pd.DataFrame,
                        cold_events: pd.DataFrame, items: pd.DataFrame, popularity: np.ndarray,
                        exclude_seen: bool = True, seed: int = 0) -> Dict[str, Any]:
    """model: trained with use_content (config `mc`) on `events` (item_idx from `index`); cold_events: the
    held-out events; items: the item table with their content. Returns metrics with 95% CIs."""
    if not model.use_content:
        raise ValueError("cold-start evaluation needs a model with use_content")
    model = copy.deepcopy(model).eval()
    cold_ids = np.sort(pd.unique(cold_events["item_id"]))
    ext = ItemIndex(np.concatenate([index.ids.to_numpy(), cold_ids]))
    table = items.drop_duplicates("item_id").set_index("item_id").reindex(cold_ids).reset_index()
    cat, text, num = encode_content(mc, table)
    model.set_item_content(torch.cat([model.item_categorical, cat]), torch.cat([model.item_text, text]),
                           torch.cat([model.item_numeric, num]))
    every = pd.concat([events.drop(columns="item_idx"), cold_events], ignore_index=True)
    every = every.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)
    every = every.assign(item_idx=ext.encode(every["item_id"]))
    first_cold = len(index) + 1
    cases = _cases(every, first_cold)
    cols = EventColumns(every)
    items_t, feats, lengths = encode_cases(model, cols, cases)
    seen = seen_items(cols, cases)
    targets = torch.as_tensor(cases.targets)
    rows = len(ext) + 1
    pop = np.zeros(rows); pop[:len(popularity)] = popularity
    gen = torch.Generator().manual_seed(seed)
    rand = torch.rand(1, rows, generator=gen, dtype=torch.float64)

    def fixed(values: np.ndarray):
        # Distinct values keep their order; equal ones are ordered by the random draw.
        gap = float(np.diff(np.unique(values)).min()) if len(np.unique(values)) > 1 else 1.0
        return fixed_scorer(torch.as_tensor(values, dtype=torch.float64) + rand.view(-1) * gap * 0.5)

    scorers = {
        "model": model_scorer(model),
        "popularity": fixed(pop),
        "content_popularity": fixed(_content_popularity(model, pop)),
        "random": fixed_scorer(rand.view(-1)),
    }
    cold_only = torch.arange(rows) >= first_cold  # rows the held-out-only ranking counts

    out: Dict[str, Any] = {"held_out_items": int(len(cold_ids)), "held_out_events": int(len(cold_events)),
                           "cases": int(len(cases)), "catalogue_items": int(len(ext))}
    with torch.no_grad():
        for name, scorable in (("full_catalogue", None), ("held_out_only", cold_only)):
            out[name] = {k: summarize(evaluate_ranking(s, items_t, feats, lengths, targets, exclude_seen,
                                                       scorable=scorable, seen=seen), ci=True, seed=seed)
                         for k, s in scorers.items() if not (k == "content_popularity" and name == "full_catalogue")}
    m = out["held_out_only"]
    log.info("cold start: %d held-out items, %d cases; held-out-only HR@10 model %.4f, content popularity "
             "%.4f, random %.4f", out["held_out_items"], out["cases"], m["model"]["HR@10"],
             m["content_popularity"]["HR@10"], m["random"]["HR@10"])
    return out

