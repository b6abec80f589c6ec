"""train.datasets against the real files in $SEQREC_DATA (default ../shared/data); skipped if absent.

    .venv/bin/python -m pytest -q tests/test_datasets.py
"""
import json
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from train import datasets
from train.datasets import data_dir, load_dataset


def need(name: str) -> Path:
    path = data_dir() / name
    if not path.is_dir():
        pytest.skip(f"dataset {name} not found at {path}; set SEQREC_DATA")
    return path


def assert_canonical(events: pd.DataFrame) -> None:
    assert list(events.columns[:3]) == ["user_id", "item_id", "timestamp"]
    assert events.index.equals(pd.RangeIndex(len(events)))
    assert events["user_id"].dtype == "int64" and events["item_id"].dtype == "int64"
    assert events["timestamp"].dtype == "float64" and events["timestamp"].notna().all()
    keys = events[["user_id", "timestamp", "item_id"]]
    assert keys.equals(keys.sort_values(["user_id", "timestamp", "item_id"]).reset_index(drop=True))


@pytest.fixture(scope="module")
def movielens():
    need("ml-latest-small")
    return load_dataset("ml-latest-small")


@pytest.fixture(scope="module")
def beauty():
    need("amazon-beauty")
    return load_dataset("amazon-beauty")


def test_data_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SEQREC_DATA", raising=False)
    repo = Path(datasets.__file__).resolve().parent.parent
    assert data_dir() == (repo.parent / "shared" / "data").resolve()
    monkeypatch.setenv("SEQREC_DATA", str(tmp_path))
    assert data_dir() == tmp_path


def test_missing_folder_and_unknown_name(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQREC_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="SEQREC_DATA"):
        load_dataset("amazon-beauty")
    (tmp_path / "amazon-beauty").mkdir()
    with pytest.raises(FileNotFoundError, match="beauty.txt.*SEQREC_DATA"):
        load_dataset("amazon-beauty")
    with pytest.raises(ValueError, match="unknown dataset 'ml-1m'.*amazon-beauty"):
        load_dataset("ml-1m")


def test_movielens_counts(movielens):
    events, items, report = movielens
    assert_canonical(events)
    assert report.rows_read == 100_836 + 3_683
    # 260 tag rows repeat (user, movie, second) of another tag row: several tags at once.
    assert report.duplicates == 260 and report.total_dropped == 260
    assert events["event_type"].value_counts().to_dict() == {"rate": 100_836, "tag": 3_683 - 260}
    assert events["user_id"].nunique() == 610
    assert len(items) == 9_742 and items["item_id"].is_unique
    assert set(events["item_id"]) <= set(items["item_id"])


def test_movielens_columns_and_values(movielens):
    events, items, _ = movielens
    assert list(events.columns) == ["user_id", "item_id", "timestamp", "event_type", "strength", "tag"]
    rate = events[events["event_type"] == "rate"]
    tag = events[events["event_type"] == "tag"]
    assert rate["strength"].between(0.5, 5).all() and rate["tag"].isna().all()
    assert tag["strength"].isna().all() and tag["tag"].notna().all()
    # First line of ratings.csv: user 1 rated movie 1 4.0 at 964982703.
    row = rate[(rate["user_id"] == 1) & (rate["item_id"] == 1)].iloc[0]
    assert (row["strength"], row["timestamp"]) == (4.0, 964982703.0)
    assert list(items.columns) == ["item_id", "title", "genres"]
    toy = items[items["item_id"] == 1].iloc[0]
    assert toy["title"] == "Toy Story (1995)"
    assert toy["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert (items["genres"].map(len) == 0).sum() == 34  # "(no genres listed)"


def test_amazon_beauty_counts(beauty):
    events, items, report = beauty
    assert_canonical(events)
    assert items is None and report.total_dropped == 0
    assert len(events) == 353_962
    assert events["user_id"].nunique() == 40_226
    assert events["item_id"].nunique() == 54_542
    assert (events["item_id"].min(), events["item_id"].max()) == (1, 54_542)


def test_amazon_beauty_keeps_each_users_file_order(beauty):
    events, _, _ = beauty
    expected = defaultdict(list)
    with open(data_dir() / "amazon-beauty" / "beauty.txt") as f:
        for line in f:
            user, item = line.split()
            expected[int(user)].append(int(item))
    got = events.groupby("user_id")["item_id"].agg(list).to_dict()
    assert got == dict(expected)
    first = events[events["user_id"] == 1]["timestamp"].tolist()
    assert first == [float(k) for k in range(len(first))]  # positions, not times


def test_otto_sample():
    root = need("otto-sample")
    events, items, report = load_dataset("otto-sample")
    assert_canonical(events)
    assert items is None and report.total_dropped == 0
    assert list(events.columns) == ["user_id", "item_id", "timestamp", "event_type"]
    assert len(events) == 862 and events["user_id"].nunique() == 20
    assert events["event_type"].value_counts().to_dict() == {"clicks": 800, "carts": 52, "orders": 10}
    first = json.loads((root / "train.jsonl").read_text().splitlines()[0])
    e0 = first["events"][0]
    row = events[events["user_id"] == first["session"]].iloc[0]
    assert (row["item_id"], row["timestamp"]) == (e0["aid"], e0["ts"] / 1000)
    test_events, _, _ = datasets.load_otto(root, split="test")
    assert len(test_events) == 8


def test_diginetica_sample():
    need("diginetica-sample")
    events, items, report = load_dataset("diginetica-sample")
    assert_canonical(events)
    assert items is None and report.total_dropped == 0
    assert list(events.columns) == ["user_id", "item_id", "timestamp", "customer_id"]
    assert len(events) == 12_391 and events["user_id"].nunique() == 2_986
    assert events["customer_id"].notna().sum() == 4_710
    # Session 1 lists its views out of order; item 9654 is the first by timeframe (75,848 ms).
    s1 = events[events["user_id"] == 1]
    assert s1["item_id"].iloc[0] == 9654
    assert s1["timestamp"].iloc[0] == pd.Timestamp("2016-05-09", tz="UTC").timestamp() + 75.848
    # Session 629 crosses midnight: its times stay within the session's 20 minutes.
    s629 = events[events["user_id"] == 629]["timestamp"]
    assert s629.max() - s629.min() < 20 * 60
