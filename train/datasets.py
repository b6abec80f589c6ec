"""Loaders for the real datasets bundled beside the checkout (see ../shared/data/README.md).

    from train.datasets import load_dataset
    events, items, report = load_dataset("amazon-beauty")   # reads $SEQREC_DATA/amazon-beauty

Every loader returns (events, items or None, DropReport); events are in the canonical schema of
`train.events` (user_id, item_id, timestamp, then optional event_type, source and extra columns).
The data folder is $SEQREC_DATA, default `../shared/data` next to the repository root.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import pandas as pd

from .events import ColumnMap, DropReport, load_events

Loaded = Tuple[pd.DataFrame, Optional[pd.DataFrame], DropReport]
PathLike = Union[str, Path]


def data_dir() -> Path:
    """$SEQREC_DATA, else <repo root>/../shared/data (repo root = the folder holding train/)."""
    env = os.environ.get("SEQREC_DATA")
    if env:
        return Path(env)
    return (Path(__file__).resolve().parent.parent / ".." / "shared" / "data").resolve()


def _file(root: Optional[PathLike], name: str, filename: str) -> Path:
    path = (Path(root) if root is not None else data_dir() / name) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{name}: {path} not found; set SEQREC_DATA to the folder holding "
                                f"{name}/ (default ../shared/data)")
    return path


def load_movielens(root: Optional[PathLike] = None) -> Loaded:
    """ml-latest-small: ratings.csv and tags.csv as two event types, movies.csv as items.

    Events: user_id, item_id, timestamp, event_type ("rate" | "tag"), strength (the rating,
    0.5..5; NaN for tags, which carry no rating: fill it yourself if you weight by strength),
    tag (the tag text; NaN for ratings).
    Items: item_id, title, genres (list of str; "(no genres listed)" gives []).

    A user who puts several tags on one movie in the same second makes several tag rows with the
    same (user, item, timestamp, event_type): the first is kept, the rest counted as duplicates.
    """
    ratings = pd.read_csv(_file(root, "ml-latest-small", "ratings.csv"))
    tags = pd.read_csv(_file(root, "ml-latest-small", "tags.csv"))
    movies = pd.read_csv(_file(root, "ml-latest-small", "movies.csv"))
    raw = pd.concat([
        ratings.assign(event_type="rate").rename(columns={"rating": "strength"}),
        tags.assign(event_type="tag", strength=np.nan),
    ], ignore_index=True)
    events, report = load_events(raw, ColumnMap(user_id="userId", item_id="movieId"),
                                   name="ml-latest-small")

    genres = movies["genres"].fillna("").str.split("|")
    items = pd.DataFrame({
        "item_id": movies["movieId"].astype("int64"),
        "title": movies["title"],
        "genres": [[g for g in gs if g and g != "(no genres listed)"] for gs in genres],
    })
    return events, items, report


def load_amazon_beauty(root: Optional[PathLike] = None) -> Loaded:
    """amazon-beauty (BERT4Rec preprocessing): beauty.txt, one `user item` pair a line.

    The file has no times, only each user's lines in time order; `timestamp` is therefore the
    line's position within its user (0, 1, 2, ...): an order, not a time. Never compare it across
    users or read it as seconds. Sorting by (user_id, timestamp) reproduces the file's order exactly,
    which the published leave-one-out protocol depends on.
    """
    path = _file(root, "amazon-beauty", "beauty.txt")
    raw = pd.read_csv(path, sep=" ", header=None, names=["user_id", "item_id"])
    raw["timestamp"] = raw.groupby("user_id", sort=False).cumcount().astype("float64")
    events, report = load_events(raw, name=str(path))
    return events, None, report


OTTO_FILES = {"train": "train.jsonl", "test": "test_sessions.jsonl"}


def load_otto(root: Optional[PathLike] = None, split: str = "train") -> Loaded:
    """otto-sample: JSON lines {"session", "events": [{"aid", "ts" (ms), "type"}]}.

    session -> user_id, aid -> item_id, ts (ms) -> timestamp (s), type -> event_type
    ("clicks" | "carts" | "orders"). `split="train"` (train.jsonl) holds the 20 sessions, 862 events
    that the data README describes; `split="test"` (test_sessions.jsonl) is 8 one-click sessions.
    Reads line by line: fine for the sample, the full OTTO log (220M events) needs a chunked reader.
    """
    if split not in OTTO_FILES:
        raise ValueError(f"split must be one of {sorted(OTTO_FILES)}, got {split!r}")
    path = _file(root, "otto-sample", OTTO_FILES[split])
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                session = json.loads(line)
                rows.extend((session["session"], e.get("aid"), e.get("ts"), e.get("type"))
                            for e in session["events"])
    raw = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type"])
    events, report = load_events(raw, timestamp_unit="ms", name=str(path))
    return events, None, report


def load_diginetica(root: Optional[PathLike] = None) -> Loaded:
    """diginetica-sample: `session_id;user_id;item_id;timeframe;eventdate` item views.

    user_id = session_id (sessions are the sequences; the site's own user id, mostly NA, is kept as
    nullable `customer_id`). `timeframe` is milliseconds since the session's first event and
    `eventdate` the calendar day of each event, so a session crossing midnight changes date
    mid-session. timestamp = midnight UTC of the session's first date + timeframe: exact order and
    gaps within a session, only day-level accuracy across sessions (the time of day is not given).
    The file is not in time order within a session; the canonical sort fixes that.
    """
    path = _file(root, "diginetica-sample", "sample_train-item-views.csv")
    raw = pd.read_csv(path, sep=";", dtype={"user_id": "Int64"})
    day = pd.to_datetime(raw["eventdate"], format="%Y-%m-%d", errors="coerce", utc=True)
    start = day.groupby(raw["session_id"]).transform("min")
    start_s = (start - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    raw["timestamp"] = start_s + raw["timeframe"] / 1000.0
    raw = raw.rename(columns={"user_id": "customer_id"}).drop(columns=["timeframe", "eventdate"])
    events, report = load_events(raw, ColumnMap(user_id="session_id"), name=str(path))
    return events, None, report


LOADERS: Dict[str, Callable[..., Loaded]] = {
    "ml-latest-small": load_movielens,
    "amazon-beauty": load_amazon_beauty,
    "otto-sample": load_otto,
    "diginetica-sample": load_diginetica,
}


def load_dataset(name: str) -> Loaded:
    """Load a bundled dataset by folder name from data_dir()."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(LOADERS)}")
    root = data_dir() / name
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} not found; set SEQREC_DATA to the folder "
                                f"holding {name}/ (default ../shared/data beside the repository)")
    return LOADERS[name](root)
