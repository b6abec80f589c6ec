"""train.synthetic_scale: the small generator's world and planted rates, vectorised; its Parquet
parts and CLI. On small data only (the 2M-item run is `make bench-scale`'s).

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_synthetic_scale.py
"""
import logging
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from synthetic_rates import coherence_violations, planted_rates
from train.events import load_events
from train.synthetic import EVENT_TYPES, SOURCES, generate_marketplace
from train import synthetic_scale
from train.synthetic_scale import generate_marketplace_scale, main, write_parquet

# Seconds of numpy each (~30 s for the module): in `make test`, not in the fast lane.
pytestmark = pytest.mark.slow

SIZE = dict(n_users=10_000, n_items=5_000)  # ~220k events, a few seconds
# Over seeds 0-2 of both generators at SIZE every rate stays within a spread of 0.015 (the widest:
# session_first_in_first, over ~27k sessions); seed 0 of the two differs by at most 0.006.
RATE_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def market():
    return generate_marketplace_scale(seed=0, **SIZE)


def test_same_seed_same_frames_other_seed_other_frames(market):
    events, items = market
    again_events, again_items = generate_marketplace_scale(seed=0, **SIZE)
    pd.testing.assert_frame_equal(events, again_events)
    pd.testing.assert_frame_equal(items, again_items)
    tiny = dict(n_users=300, n_items=200)
    one, other = generate_marketplace_scale(seed=0, **tiny)[0], generate_marketplace_scale(seed=1, **tiny)[0]
    assert not other["item_id"].head(200).equals(one["item_id"].head(200))


def test_schema_lean_dtypes_and_order(market):
    events, items = market
    assert list(events.columns) == ["user_id", "item_id", "timestamp", "event_type", "source"]
    assert [str(d) for d in events.dtypes] == ["int32", "int32", "float64", "category", "category"]
    assert list(events["event_type"].cat.categories) == list(EVENT_TYPES)
    assert list(events["source"].cat.categories) == list(SOURCES)
    assert isinstance(events.index, pd.RangeIndex)
    # Sorted by (user_id, timestamp, item_id); a user's times are even strictly increasing.
    user, t = events["user_id"].to_numpy(), events["timestamp"].to_numpy()
    assert (np.diff(user) >= 0).all() and (np.diff(t)[np.diff(user) == 0] > 0).all()
    assert (t % 1 == 0).all()
    per_user = events.groupby("user_id").size()
    assert per_user.index.tolist() == list(range(1, SIZE["n_users"] + 1)) and per_user.max() <= 60
    assert list(items.columns) == ["item_id", "category", "price", "listed_at", "sold_at", "available"]
    assert [str(d) for d in items.dtypes] == ["int64", "category", "float64", "float64", "float64", "bool"]
    assert len(items) == SIZE["n_items"] and items["item_id"].is_unique
    assert items["item_id"].min() > SIZE["n_items"] and set(events["item_id"]) <= set(items["item_id"])
    assert items["category"].nunique() == 12 and items["available"].equals(items["sold_at"].isna())


def test_loads_as_a_canonical_log_without_drops(market):
    events, _ = market
    loaded, report = load_events(events)
    assert report.total_dropped == 0 and len(loaded) == len(events)
    for col in ("user_id", "item_id", "timestamp"):
        assert (loaded[col].to_numpy() == events[col].to_numpy()).all()
    for col in ("event_type", "source"):
        assert (loaded[col].astype(str).to_numpy() == events[col].astype(str).to_numpy()).all()


def test_users_touch_only_live_items_and_a_purchase_sells(market):
    events, items = market
    assert coherence_violations(events, items) == {
        "before_listing": 0, "after_sale": 0, "bought_twice": 0, "sold_at_not_purchase": 0}
    assert (events["event_type"] == "purchase").sum() > 1000
    # The check sees a violation: a bought item marked sold a minute before its purchase.
    bought = events.loc[events["event_type"] == "purchase", "item_id"].iloc[0]
    moved = items.assign(sold_at=items["sold_at"] - 60 * (items["item_id"] == bought))
    assert coherence_violations(events, moved)["sold_at_not_purchase"] == 1


def _generate_and_count(caplog, **kwargs):
    """(events, items, re-picked, dropped) from the generator's log line."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="train.synthetic_scale"):
        events, items = generate_marketplace_scale(**kwargs)
    line = caplog.records[-1].getMessage()
    counts = re.search(r"(\d+) on items already sold dropped; (\d+) re-picked", line)
    return events, items, int(counts.group(2)), int(counts.group(1))


def test_events_picked_before_a_purchase_are_picked_again(caplog, monkeypatch):
    """Inside a window an event may be picked before another user's earlier purchase of its item:
    it is picked again, so nothing is dropped; without the repair passes such events are dropped
    (the world stays coherent either way); shorter windows need fewer repairs."""
    size = dict(n_users=2_000, n_items=1_500, seed=0)
    events, _, repicked, dropped = _generate_and_count(caplog, **size)
    assert repicked > 0 and dropped == 0
    monkeypatch.setattr(synthetic_scale, "MAX_REPAIRS", 0)
    unrepaired, items, none, dropped = _generate_and_count(caplog, **size)
    assert none == 0 and dropped > 0 and len(unrepaired) == len(events) - dropped
    assert set(coherence_violations(unrepaired, items).values()) == {0}
    monkeypatch.setattr(synthetic_scale, "MAX_REPAIRS", 40)
    monkeypatch.setattr(synthetic_scale, "WINDOW_EVENTS", 15)  # ~30-minute windows here
    short, short_items, fewer, dropped = _generate_and_count(caplog, **size)
    assert dropped == 0 and 0 <= fewer < repicked
    assert set(coherence_violations(short, short_items).values()) == {0}


def test_planted_rates_match_the_small_generator(market):
    """Signals 1-5 at the rates train.synthetic plants at the same size, and as test_synthetic asks."""
    scale = planted_rates(*market)
    small = planted_rates(*generate_marketplace(seed=0, **SIZE))
    assert scale.keys() == small.keys()
    far = {k: (round(scale[k], 3), round(small[k], 3)) for k in scale
           if abs(scale[k] - small[k]) > RATE_TOLERANCE}
    assert not far, far
    assert scale["chain_share"] > 0.25 and scale["chain_share"] > 5 * scale["chain_share_shuffled"]
    assert scale["chain_share_across_gap"] < scale["chain_share"] / 2
    assert scale["same_after_recommendation"] > 0.85 and scale["same_after_feed"] < 0.2
    assert scale["same_after_purchase"] < 0.02 and scale["same_after_favourite"] > 0.9
    assert scale["same_within_session"] - scale["same_across_gap"] > 0.1
    assert scale["session_first_in_previous"] - scale["session_first_in_first"] > 0.1


def test_parquet_parts_by_user_range_round_trip(market, tmp_path):
    events, items = market
    assert write_parquet(events, items, tmp_path, users_per_part=3_000) == 4
    parts = sorted((tmp_path / "events").glob("part-*.parquet"))
    assert [p.name for p in parts] == [f"part-{k:05d}.parquet" for k in range(4)]
    tables = [pq.read_table(p).to_pandas() for p in parts]
    assert [(t["user_id"].min(), t["user_id"].max()) for t in tables] == [
        (1, 3000), (3001, 6000), (6001, 9000), (9001, 10000)]
    pd.testing.assert_frame_equal(pd.concat(tables, ignore_index=True), events)
    pd.testing.assert_frame_equal(pq.read_table(tmp_path / "items.parquet").to_pandas(), items)
    # A rewrite with fewer users leaves no stale part behind.
    assert write_parquet(events[events["user_id"] <= 100], items, tmp_path, users_per_part=3_000) == 1
    assert len(list((tmp_path / "events").glob("*.parquet"))) == 1


def test_cli_writes_parts_and_prints_counts(tmp_path, capsys):
    main(["--users", "300", "--items", "200", "--events-per-user", "2,5", "--users-per-part", "100",
          "--seed", "3", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    events = pd.concat([pq.read_table(p).to_pandas() for p in sorted((tmp_path / "events").glob("*.parquet"))],
                       ignore_index=True)
    expected, _ = generate_marketplace_scale(300, 200, events_per_user=(2, 5), seed=3)
    pd.testing.assert_frame_equal(events, expected)
    assert printed.startswith(f"{len(events)} events, 300 users, 200 items") and "(3 parts)" in printed
    bad = subprocess.run([sys.executable, "-m", "train.synthetic_scale", "--events-per-user", "9", "--out",
                          str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "expected LO,HI" in bad.stderr


def test_small_and_invalid_parameters():
    events, items = generate_marketplace_scale(n_users=30, n_items=60, n_categories=3, events_per_user=(2, 4),
                                               seed=7)
    assert events["user_id"].nunique() == 30 and set(events["item_id"]) <= set(items["item_id"])
    # With 3 items most moments have nothing on sale: those events are skipped, nothing breaks.
    events, items = generate_marketplace_scale(n_users=5, n_items=3, n_categories=3, seed=7)
    assert 0 < len(events) < 5 * 60 and set(events["item_id"]) <= set(items["item_id"])
    assert set(coherence_violations(events, items).values()) == {0}
    with pytest.raises(ValueError):
        generate_marketplace_scale(n_items=5, n_categories=12)
    with pytest.raises(ValueError):
        generate_marketplace_scale(events_per_user=(10, 5))
