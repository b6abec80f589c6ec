"""train.events at scale: a directory of Parquet parts (train.synthetic_scale's layout), column
projection, categorical labels, and the index-array sort/dedup against the plain pandas recipe.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_events_scale.py
"""
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from train.config import TrainConfig
from train.errors import UserError
from train.events import load_events
from train.pipeline import load_data, prepare


def messy(n=600, seed=0):
    """Ties on (user, time), repeats with and without another event type, null ids and times."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"user_id": rng.integers(1, 9, n).astype(float), "item_id": rng.integers(1, 7, n),
                       "timestamp": rng.integers(0, 6, n).astype(float),
                       "event_type": rng.choice(["view", "buy", None], n), "source": rng.choice(["feed", "search"], n),
                       "price": np.arange(n, dtype=float)})
    df.loc[rng.random(n) < 0.05, "user_id"] = np.nan
    df.loc[rng.random(n) < 0.05, "timestamp"] = np.nan
    return df


def pandas_recipe(df):
    """The definition in a few pandas lines: drop null ids and times, the first of each
    (user, item, time, type) kept, stable sort by (user, time, item)."""
    df = df.dropna(subset=["user_id", "timestamp"]).astype({"user_id": "int64"})
    df = df[~df.duplicated(["user_id", "item_id", "timestamp", "event_type"], keep="first")]
    return df.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)


def as_lists(df):
    return {c: df[c].astype(object).where(df[c].notna(), None).tolist() for c in df.columns}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sort_and_dedup_equal_the_pandas_recipe(seed):
    df = messy(seed=seed)
    events, report = load_events(df)
    want = pandas_recipe(df)
    assert as_lists(events) == as_lists(want[list(events.columns)])
    assert report.null_user == int(df["user_id"].isna().sum())
    assert report.duplicates == report.rows_read - report.null_user - report.unparsable_timestamp - len(want)


@pytest.fixture
def parts_dir(tmp_path):
    """DIR/events/part-*.parquet (with a repeat across two parts, dictionary-encoded labels) and
    DIR/items.parquet, as train.synthetic_scale writes them; plus the same log as one CSV file."""
    df = messy(n=300, seed=4).astype({"user_id": "Int64"})  # so the CSV spells ids 1, not 1.0
    (tmp_path / "log" / "events").mkdir(parents=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.set_column(3, "event_type", table.column("event_type").dictionary_encode())
    for k, a in enumerate(range(0, 300, 100)):
        pq.write_table(table.slice(a, 100), tmp_path / "log" / "events" / f"part-{k:05d}.parquet")
    pq.write_table(table.slice(0, 1), tmp_path / "log" / "events" / "part-00003.parquet")  # a repeat
    pd.DataFrame({"item_id": range(1, 7), "category": list("aabbcc")}).to_parquet(tmp_path / "log" / "items.parquet")
    pd.concat([df, df.iloc[:1]]).to_csv(tmp_path / "log.csv", index=False)
    return tmp_path


def test_a_directory_of_parts_reads_as_one_log(parts_dir):
    from_dir, r_dir = load_events(parts_dir / "log")
    from_csv, r_csv = load_events(parts_dir / "log.csv")
    assert r_dir.to_dict() == r_csv.to_dict() and r_dir.duplicates >= 1 and r_dir.rows_read == 301
    assert as_lists(from_dir) == as_lists(from_csv)
    assert isinstance(from_dir["event_type"].dtype, pd.CategoricalDtype)  # codes, not a string per event
    assert sorted(from_dir["event_type"].cat.categories) == sorted(from_dir["event_type"].dropna().unique())


def test_projection_reads_only_the_canonical_columns(parts_dir):
    events, _ = load_events(parts_dir / "log", extra_columns=False)
    assert list(events.columns) == ["user_id", "item_id", "timestamp", "event_type", "source"]
    events, _ = load_events(parts_dir / "log.csv", extra_columns=False)
    assert "price" not in events


def test_cli_data_directory_brings_its_item_table(parts_dir):
    events, items, drops = load_data(TrainConfig(data=str(parts_dir / "log")))
    assert items["category"].tolist() == list("aabbcc") and drops.rows_read == 301
    assert "price" not in events  # training reads no extra event column
    prep = prepare(TrainConfig(data=str(parts_dir / "log"), min_events=3))
    assert set(prep.seconds) == {"load", "index", "split", "columns"} and prep.events["item_idx"].dtype == np.int32


def test_a_directory_without_parquet_files_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="without Parquet event files"):
        load_events(tmp_path)


def test_distinct_labels_of_a_categorical_equal_those_of_its_text():
    from train.pipeline import distinct_labels
    text = pd.Series(["view", None, "buy", "view"])
    cat = pd.Series(pd.Categorical(text, categories=["view", "buy", "unused"]))
    assert distinct_labels(cat) == distinct_labels(text) == ["buy", "view"]  # missing = unknown, no entry


@pytest.mark.training  # runs `python -m train`
def test_cli_trains_on_a_directory_of_parts(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from train.synthetic import generate_marketplace
    events, items = generate_marketplace(n_users=200, n_items=100, seed=0)
    (tmp_path / "log" / "events").mkdir(parents=True)
    for k, users in enumerate(np.array_split(np.unique(events["user_id"]), 3)):
        events[events["user_id"].isin(users)].to_parquet(tmp_path / "log" / "events" / f"part-{k:05d}.parquet")
    items.to_parquet(tmp_path / "log" / "items.parquet")
    proc = subprocess.run([sys.executable, "-m", "train", "--data", str(tmp_path / "log"), "--out", str(tmp_path / "out"),
                           "--set", "epochs=1", "batch_size=64", "sample_size=64", "num_threads=1",
                           "model.embedding_dim=8", "model.hidden_dim=8"],
                          cwd=Path(__file__).resolve().parents[1], env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "train" / "summary.json").read_text())
    assert summary["data"]["events"] == len(events) and summary["data"]["dropped"]["total_dropped"] == 0
    assert {"load", "index", "split", "columns", "windows"} <= set(summary["prepare_seconds"])
    exported = pd.read_parquet(tmp_path / "out" / "items.parquet")
    assert exported["category"].notna().all()  # the directory's item table reached the export
