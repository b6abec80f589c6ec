"""train.events: canonical schema, id typing, timestamp parsing and drop counting.

    .venv/bin/python -m pytest -q tests/test_events.py
"""
import pandas as pd
import pytest

from train.events import ColumnMap, DropReport, load_events

# One good event per user 1 and 3, plus one of each kind of bad row.
BAD_CSV = """uid,iid,ts,kind,note
1,10,100,view,kept
1,10,100,view,exact duplicate of the row above
1,10,100,buy,same time but another event type: kept
2,,200,view,null item
,11,300,view,null user
,,300,view,null user and item: counted once as null user
3,12,not a time,view,unparsable timestamp
3,12,,view,missing timestamp
3,013,2024-01-01T00:00:00Z,view,zero-padded id and an ISO timestamp
3,14,1704067200,view,same second as the row above: tie broken by item id
"""
COLUMNS = ColumnMap(user_id="uid", item_id="iid", timestamp="ts", event_type="kind")


@pytest.fixture
def bad_csv(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(BAD_CSV)
    return path


def test_drop_counts_on_bad_csv(bad_csv):
    events, report = load_events(bad_csv, COLUMNS)
    assert report.to_dict() == {
        "rows_read": 10, "null_user": 2, "null_item": 1, "unparsable_timestamp": 2, "duplicates": 1,
        "extra": {}, "total_dropped": 6,
    }
    assert report.rows_kept == len(events) == 4
    assert events["note"].str.contains("duplicate|null|unparsable|missing").sum() == 0


def test_canonical_columns_order_and_types(bad_csv):
    events, _ = load_events(bad_csv, COLUMNS)
    assert list(events.columns) == ["user_id", "item_id", "timestamp", "event_type", "note"]
    assert events.index.equals(pd.RangeIndex(len(events)))
    assert events["user_id"].dtype == "int64"
    assert events["timestamp"].dtype == "float64"
    # "013" is not an integer spelling, so the whole item column stays text, exactly as written.
    assert events["item_id"].tolist() == ["10", "10", "013", "14"]
    # ISO string and epoch number agree; ties on (user, timestamp) are broken by item id.
    assert events["timestamp"].tolist() == [100.0, 100.0, 1704067200.0, 1704067200.0]
    assert events["event_type"].tolist() == ["view", "buy", "view", "view"]


def test_missing_required_column_is_named(bad_csv):
    with pytest.raises(ValueError, match=r"'when'.*timestamp.*available columns: \['uid', 'iid', 'ts'"):
        load_events(bad_csv, ColumnMap(user_id="uid", item_id="iid", timestamp="when"))


def test_integer_ids_stay_integers_even_with_gaps(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("user_id,item_id,timestamp\n1,12,5\n2,,6\n3,7,7\n")
    events, report = load_events(path)
    assert report.null_item == 1
    assert events["item_id"].dtype == "int64" and events["item_id"].tolist() == [12, 7]


def test_float_ids_from_a_dataframe_become_int_and_input_is_untouched():
    df = pd.DataFrame({"user_id": [1.0, 2.0, None], "item_id": [12.0, 13.0, 14.0], "timestamp": [3, 2, 1]})
    before = df.copy()
    events, report = load_events(df)
    pd.testing.assert_frame_equal(df, before)
    assert report.null_user == 1
    assert events["user_id"].dtype == "int64" and events["item_id"].dtype == "int64"
    assert events["item_id"].tolist() == [12, 13]


def test_string_ids_and_blank_ids():
    df = pd.DataFrame({"user_id": ["a", "b", "  "], "item_id": ["x1", "x2", "x3"], "timestamp": [1, 2, 3]})
    events, report = load_events(df)
    assert report.null_user == 1
    assert events["user_id"].tolist() == ["a", "b"]
    assert pd.api.types.is_string_dtype(events["item_id"])


def test_timestamp_units_and_datetime_columns():
    ms = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": [1_500, 500]})
    events, _ = load_events(ms, timestamp_unit="ms")
    assert events["timestamp"].tolist() == [0.5, 1.5] and events["item_id"].tolist() == [2, 1]
    naive = pd.to_datetime(["2024-01-01 00:00:01", "2024-01-01 00:00:00"])
    for stamps in (naive, naive.tz_localize("UTC"), naive.tz_localize("Europe/Oslo")):
        events, _ = load_events(ms.assign(timestamp=stamps))
        offset = 0 if stamps.tz is None or str(stamps.tz) == "UTC" else -3600  # Oslo is UTC+1 in winter
        assert events["timestamp"].tolist() == [1704067200.0 + offset, 1704067201.0 + offset]
    with pytest.raises(ValueError, match="timestamp_unit"):
        load_events(ms, timestamp_unit="minutes")


def test_sort_is_user_then_time_then_item():
    df = pd.DataFrame({"user_id": [2, 1, 1, 1], "item_id": [5, 9, 3, 4], "timestamp": [0, 10, 10, 5]})
    events, _ = load_events(df)
    assert events[["user_id", "item_id"]].values.tolist() == [[1, 4], [1, 3], [1, 9], [2, 5]]


def test_parquet_with_custom_columns_and_extra_columns(tmp_path):
    df = pd.DataFrame({"u": [1, 1], "i": ["a", "b"], "t": [2.0, 1.0], "src": ["feed", "search"],
                       "price": [9.5, 3.0]})
    path = tmp_path / "events.parquet"
    df.to_parquet(path)
    events, report = load_events(path, ColumnMap(user_id="u", item_id="i", timestamp="t", source="src"))
    assert report.total_dropped == 0
    assert list(events.columns) == ["user_id", "item_id", "timestamp", "source", "price"]
    assert events["price"].tolist() == [3.0, 9.5]


def test_refuses_to_overwrite_an_unmapped_canonical_column():
    df = pd.DataFrame({"session_id": [1], "user_id": [7], "item_id": [1], "timestamp": [0]})
    with pytest.raises(ValueError, match="'user_id' would be overwritten by 'session_id'"):
        load_events(df, ColumnMap(user_id="session_id"))


def test_unknown_file_extension(tmp_path):
    path = tmp_path / "events.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_events(path)


def test_drop_report_merge_and_totals():
    a = DropReport(rows_read=10, null_user=1, duplicates=2, extra={"too_short": 3})
    b = DropReport(rows_read=5, unparsable_timestamp=1, extra={"too_short": 1, "bot": 2})
    m = a.merge(b)
    assert (m.rows_read, m.null_user, m.unparsable_timestamp, m.duplicates) == (15, 1, 1, 2)
    assert m.extra == {"too_short": 4, "bot": 2}
    assert m.total_dropped == 1 + 1 + 2 + 4 + 2 and m.rows_kept == 15 - 10
    assert a.extra == {"too_short": 3}  # merge does not mutate
    assert m.to_dict()["total_dropped"] == 10


def test_strength_is_a_number_or_unknown_and_never_drops_an_event(caplog):
    df = pd.DataFrame({"user_id": [1, 1, 1, 1, 1], "item_id": [1, 2, 3, 4, 5], "timestamp": [1, 2, 3, 4, 5],
                       "rating": ["4.5", "five", None, "inf", 2]})
    with caplog.at_level("WARNING"):
        events, report = load_events(df, ColumnMap(strength="rating"))
    assert report.total_dropped == 0 and len(events) == 5
    assert events["strength"].dtype == "float64"
    got = events.set_index("item_id")["strength"]
    assert got[1] == 4.5 and got[5] == 2.0 and got[[2, 3, 4]].isna().all()
    assert "2 strength values are not finite numbers" in caplog.text  # "five" and "inf"; None is just missing
