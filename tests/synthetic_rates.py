"""The rates by which the tests find train.synthetic's planted signals, for both generators
(tests/test_synthetic.py, tests/test_synthetic_scale.py): one measure, used by both.

    from synthetic_rates import event_pairs, planted_rates
    rates = planted_rates(events, items)   # {"chain_share": 0.33, "same_after_recommendation": 0.90, ...}
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import pandas as pd

SESSION_GAP = 30 * 60


def event_pairs(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """One row per event after a user's first: the event, the one before it and the gap between."""
    e = events.assign(category=events["item_id"].map(items.set_index("item_id")["category"]).astype(str),
                      event_type=events["event_type"].astype(str), source=events["source"].astype(str))
    prev = e.groupby("user_id")[["item_id", "category", "event_type", "source", "timestamp"]].shift(1)
    p = e.join(prev.add_prefix("prev_"))
    p = p[p["prev_item_id"].notna()].copy()
    p["gap"] = p["timestamp"] - p["prev_timestamp"]
    p["in_session"] = p["gap"] < SESSION_GAP
    p["same_category"] = p["category"] == p["prev_category"]
    return p


def top_successor_share(p: pd.DataFrame, min_pairs: int) -> float:
    """Over items with at least min_pairs successors, the share their most frequent successor takes."""
    n = p.groupby(["prev_item_id", "item_id"]).size()
    total, top = n.groupby(level=0).sum(), n.groupby(level=0).max()
    keep = total >= min_pairs
    return top[keep].sum() / total[keep].sum()


def session_first_recurrence(events: pd.DataFrame, items: pd.DataFrame) -> Tuple[float, float, int]:
    """From each user's third session on: how often its first category appears in the previous
    session, how often in the user's first session, and over how many sessions."""
    category = events["item_id"].map(items.set_index("item_id")["category"]).astype(str)
    code = pd.factorize(category)[0].astype(np.int64)
    gap = events.groupby("user_id")["timestamp"].diff()
    session = (gap.isna() | (gap >= SESSION_GAP)).groupby(events["user_id"]).cumsum().to_numpy(np.int64)
    user = pd.factorize(events["user_id"])[0].astype(np.int64)
    n_cat, n_sess = int(code.max()) + 1, int(session.max()) + 1

    def key(u, s, c):
        return (u * n_sess + s) * n_cat + c

    seen = np.unique(key(user, session, code))  # (user, session, category) sets
    starts = np.r_[True, (user[1:] != user[:-1]) | (session[1:] != session[:-1])]
    u, s, c = user[starts], session[starts], code[starts]
    later = s >= 3
    in_previous = np.isin(key(u[later], s[later] - 1, c[later]), seen)
    in_first = np.isin(key(u[later], 1, c[later]), seen)
    return float(in_previous.mean()), float(in_first.mean()), int(later.sum())


def planted_rates(events: pd.DataFrame, items: pd.DataFrame, pairs: pd.DataFrame = None) -> Dict[str, float]:
    """The rates train.synthetic's docstring quotes for planted signals 1-5, by name."""
    p = event_pairs(events, items) if pairs is None else pairs
    within = p[p["in_session"]]
    rng = np.random.default_rng(0)
    shuffled = within.assign(item_id=rng.permutation(within["item_id"].to_numpy()))
    no_purchase = within[within["prev_event_type"] != "purchase"]
    in_previous, in_first, _ = session_first_recurrence(events, items)
    rates = {
        "chain_share": top_successor_share(within, 20),                # 1
        "chain_share_shuffled": top_successor_share(shuffled, 20),
        "chain_share_across_gap": top_successor_share(p[~p["in_session"]], 5),
        "same_within_session": within["same_category"].mean(),         # 4
        "same_across_gap": p[~p["in_session"]]["same_category"].mean(),
        "session_first_in_previous": in_previous,                      # 5
        "session_first_in_first": in_first,
    }
    for source in ("recommendation", "search", "feed"):                # 2
        rates[f"same_after_{source}"] = no_purchase[no_purchase["prev_source"] == source]["same_category"].mean()
    for etype in ("purchase", "favourite", "message", "view"):         # 3
        rates[f"same_after_{etype}"] = within[within["prev_event_type"] == etype]["same_category"].mean()
    return {k: float(v) for k, v in rates.items()}


def coherence_violations(events: pd.DataFrame, items: pd.DataFrame) -> Dict[str, int]:
    """Counts of what the world forbids: touching an item before it is listed or after it is sold,
    an item bought twice, a bought item whose sold_at is not its purchase time. All 0 when coherent."""
    it = items.set_index("item_id").loc[events["item_id"]]
    t = events["timestamp"].to_numpy()
    bought = events[events["event_type"] == "purchase"]
    sold_at = items.set_index("item_id")["sold_at"].loc[bought["item_id"]].to_numpy()
    return {
        "before_listing": int((it["listed_at"].to_numpy() > t).sum()),
        "after_sale": int((t > it["sold_at"].fillna(np.inf).to_numpy()).sum()),
        "bought_twice": int(bought["item_id"].duplicated().sum()),
        "sold_at_not_purchase": int((sold_at != bought["timestamp"].to_numpy()).sum()),
    }
