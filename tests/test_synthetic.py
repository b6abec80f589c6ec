"""train.synthetic: determinism, a coherent marketplace, and the planted signals measurably present.

    .venv/bin/python -m pytest -q tests/test_synthetic.py
"""
import time

import numpy as np
import pandas as pd
import pytest

from synthetic_rates import coherence_violations, event_pairs, session_first_recurrence, top_successor_share
from train.events import load_events
from train.synthetic import EVENT_TYPES, SOURCES, generate_marketplace


@pytest.fixture(scope="module")
def market():
    start = time.perf_counter()
    events, items = generate_marketplace(seed=0)
    # A guard against accidental quadratic work, not a benchmark (defaults take ~0.4 s).
    assert time.perf_counter() - start < 10
    return events, items


@pytest.fixture(scope="module")
def pairs(market):
    return event_pairs(*market)


def test_same_seed_same_data_other_seed_other_data(market):
    events, items = market
    again_events, again_items = generate_marketplace(seed=0)
    pd.testing.assert_frame_equal(events, again_events)
    pd.testing.assert_frame_equal(items, again_items)
    other, _ = generate_marketplace(seed=1)
    assert not other["item_id"].head(200).equals(events["item_id"].head(200))


def test_events_are_canonical(market):
    events, _ = market
    assert list(events.columns) == ["user_id", "item_id", "timestamp", "event_type", "source"]
    assert events["user_id"].dtype == "int64" and events["item_id"].dtype == "int64"
    assert events["timestamp"].dtype == "float64"
    reloaded, report = load_events(events)
    assert report.total_dropped == 0
    pd.testing.assert_frame_equal(reloaded, events)
    assert set(events["event_type"]) == set(EVENT_TYPES) and set(events["source"]) == set(SOURCES)
    assert events["event_type"].value_counts(normalize=True)["view"] > 0.8
    per_user = events.groupby("user_id").size()
    assert per_user.index.tolist() == list(range(1, 2001)) and per_user.max() <= 60
    assert 40_000 < len(events) < 50_000
    days = (events["timestamp"].max() - events["timestamp"].min()) / 86_400
    assert 55 < days < 61


def test_items_table(market):
    _, items = market
    assert list(items.columns) == ["item_id", "category", "price", "listed_at", "sold_at", "available"]
    assert len(items) == 1500 and items["item_id"].is_unique and items["item_id"].min() > 1500
    assert items["category"].nunique() == 12
    assert (items["price"] > 0).all()
    # Price level depends on the category: category medians spread far more than within-noise.
    medians = items.groupby("category")["price"].median()
    assert medians.max() / medians.min() > 5
    assert items["available"].equals(items["sold_at"].isna())
    assert 0.1 < items["available"].mean() < 0.6
    assert (items["listed_at"] < items["sold_at"].fillna(np.inf)).all()


def test_users_touch_only_live_items_and_a_purchase_sells(market):
    events, items = market
    assert set(coherence_violations(events, items).values()) == {0}
    assert (events["event_type"] == "purchase").sum() > 200


def test_popularity_is_heavy_tailed(market):
    events, items = market
    counts = events["item_id"].value_counts()
    # Listing windows of unequal length alone concentrate events (top 10% ~0.32, top 1% ~0.05 with
    # equal popularity weights); the power law takes them to ~0.46 and ~0.10.
    assert counts.head(len(items) // 10).sum() / len(events) > 0.4
    assert counts.head(len(items) // 100).sum() / len(events) > 0.08


def test_planted_item_chains(pairs):
    """Within a session the next item is often the same successor of the previous item."""
    within = pairs[pairs["in_session"]]
    share = top_successor_share(within, 20)
    rng = np.random.default_rng(0)
    shuffled = within.assign(item_id=rng.permutation(within["item_id"].to_numpy()))
    chance = top_successor_share(shuffled, 20)
    assert share > 0.25 and share > 5 * chance
    # Planted 4: chains do not cross a long gap.
    assert top_successor_share(pairs[~pairs["in_session"]], 5) < share / 2


def test_planted_stickiness_after_recommendation(pairs):
    p = pairs[pairs["in_session"] & (pairs["prev_event_type"] != "purchase")]
    after_rec = p[p["prev_source"] == "recommendation"]["same_category"].mean()
    after_other = p[p["prev_source"] != "recommendation"]["same_category"].mean()
    assert after_rec > 0.85 and after_rec - after_other > 0.2


def test_planted_category_switch_after_purchase(pairs):
    p = pairs[pairs["in_session"]]
    after_purchase = p[p["prev_event_type"] == "purchase"]
    assert len(after_purchase) > 100
    assert after_purchase["same_category"].mean() < 0.02
    assert p[p["prev_event_type"] != "purchase"]["same_category"].mean() > 0.5


def test_planted_long_gap_resets_category(pairs):
    within = pairs[pairs["in_session"]]["same_category"].mean()
    across = pairs[~pairs["in_session"]]["same_category"].mean()
    assert within - across > 0.1


def test_planted_recency_tastes_drift(market):
    """A session's first category is found in the previous session far more often than in the first."""
    in_previous, in_first, n = session_first_recurrence(*market)
    assert n > 1000
    assert in_previous - in_first > 0.1


def test_small_and_invalid_parameters():
    events, items = generate_marketplace(n_users=30, n_items=60, n_categories=3, events_per_user=(2, 4),
                                         seed=7)
    assert events["user_id"].nunique() == 30 and len(items) == 60
    assert set(events["item_id"]) <= set(items["item_id"])
    # With 3 items most moments have nothing on sale: those events are skipped, nothing breaks.
    events, items = generate_marketplace(n_users=5, n_items=3, n_categories=3, seed=7)
    assert len(events) < 5 * 60 and set(events["item_id"]) <= set(items["item_id"])
    with pytest.raises(ValueError):
        generate_marketplace(n_items=5, n_categories=12)
    with pytest.raises(ValueError):
        generate_marketplace(events_per_user=(10, 5))
