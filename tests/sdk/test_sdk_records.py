"""Exposure and outcome records: JSON lines and Parquet round trips, the documented schema,
thread safety, and the README's warehouse SQL run (sqlite) on what the writers wrote."""

import json
import re
import sqlite3
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqrec_sdk import Experiment, Exposure, Outcome, Variant
from seqrec_sdk.readout import readout
from seqrec_sdk.records import (
    PARQUET_COLUMNS,
    JsonLinesWriter,
    ParquetWriter,
    read_jsonl,
    read_parquet,
)

README = Path(__file__).resolve().parents[2] / "sdk" / "README.md"
KEY = "ranker-gru-vs-sasrec"  # the key in the README's query
EXP = Experiment(KEY, [Variant("control", "1.0", 0.5, key="0"), Variant("sasrec", "2.0", 0.5, key="1")])


def records(n=400):
    exposures, outcomes = [], []
    for i in range(n):
        user = f"u{i % 300}"  # some users see several lists
        variant = EXP.assign(user)
        if i == 7:  # one user logged in the other arm too: the readout and the SQL drop them
            variant = EXP.variants[1 - EXP.variants.index(EXP.assign("u7"))]
        exposures.append(Exposure(KEY, variant.name, user, variant.model_version, f"rec-{i}",
                                  (i, i + 1, "sku-9"), 1_700_000_000.25 + i,
                                  fallback=i % 50 == 0, variation_id=EXP.variation_id(variant)))
        if i % 3 == 0:
            outcomes.append(Outcome(f"rec-{i}", i + 1, "click", 1_700_000_030.5 + i, user))
        if i % 11 == 0:
            outcomes.append(Outcome(f"rec-{i}", "sku-9", "convert", None, user, 19.9))
    return exposures, outcomes


def test_jsonl_round_trip(tmp_path):
    exposures, outcomes = records()
    with JsonLinesWriter(tmp_path / "e.jsonl") as w:
        w.write_many(exposures)
    with JsonLinesWriter(tmp_path / "o.jsonl") as w:
        w.write_many(outcomes[:5])
        w.write(outcomes[5].to_dict())  # a dict is written as is
    assert [Exposure.from_dict(d) for d in read_jsonl(tmp_path / "e.jsonl")] == exposures
    assert [Outcome.from_dict(d) for d in read_jsonl(tmp_path / "o.jsonl")] == outcomes[:6]
    first = json.loads((tmp_path / "e.jsonl").read_text().splitlines()[0])
    assert set(first) == set(PARQUET_COLUMNS["exposure"])  # one record shape for both formats


def test_parquet_schema_and_round_trip(tmp_path):
    exposures, outcomes = records()
    with ParquetWriter(tmp_path / "e.parquet", Exposure, rows_per_group=64) as w:
        w.write_many(exposures)
    with ParquetWriter(tmp_path / "o.parquet", Outcome) as w:
        w.write_many(o.to_dict() for o in outcomes)  # dicts are read as records
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("item_ids").type == pa.list_(pa.string())
    assert table.schema.names == list(PARQUET_COLUMNS["exposure"])
    assert pq.ParquetFile(tmp_path / "e.parquet").metadata.num_row_groups == 7  # 400 / 64
    back = read_parquet(tmp_path / "e.parquet")
    assert [Exposure.from_dict(r) for r in back] == [
        Exposure.from_dict(dict(e.to_dict(), item_ids=[str(i) for i in e.item_ids]))
        for e in exposures]
    got = [Outcome.from_dict(r) for r in read_parquet(tmp_path / "o.parquet")]
    assert got == [Outcome.from_dict(dict(o.to_dict(), item_id=str(o.item_id))) for o in outcomes]
    assert pq.read_table(tmp_path / "o.parquet").schema.names == list(PARQUET_COLUMNS["outcome"])


def test_parquet_writer_refuses_the_wrong_record_and_writes_an_empty_file(tmp_path):
    exposures, outcomes = records(3)
    w = ParquetWriter(tmp_path / "e.parquet", Exposure)
    with pytest.raises(TypeError, match="takes Exposure"):
        w.write(outcomes[0])
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.write(exposures[0])
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0


def test_writers_are_thread_safe(tmp_path):
    exposures, _ = records(400)
    jl = JsonLinesWriter(tmp_path / "e.jsonl")
    pw = ParquetWriter(tmp_path / "e.parquet", Exposure, rows_per_group=7)
    chunks = [exposures[i::8] for i in range(8)]

    def work(chunk):
        for e in chunk:
            jl.write(e)
            pw.write(e)

    threads = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jl.close()
    pw.close()
    ids = sorted(e.recommendation_id for e in exposures)
    assert sorted(d["recommendation_id"] for d in read_jsonl(tmp_path / "e.jsonl")) == ids
    assert sorted(pq.read_table(tmp_path / "e.parquet")["recommendation_id"].to_pylist()) == ids


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    with pytest.raises(ImportError, match="pip install pyarrow"):
        ParquetWriter(tmp_path / "e.parquet")


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:3"):
        list(read_jsonl(path))


def readme_sql():
    return re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readmes_warehouse_sql_runs_on_the_written_records(tmp_path):
    exposures, outcomes = records()
    with JsonLinesWriter(tmp_path / "e.jsonl") as w:
        w.write_many(exposures)
    with JsonLinesWriter(tmp_path / "o.jsonl") as w:
        w.write_many(outcomes)
    db = sqlite3.connect(":memory:")
    for table, path in (("seqrec_exposures", "e.jsonl"), ("seqrec_outcomes", "o.jsonl")):
        rows = list(read_jsonl(tmp_path / path))
        cols = list(rows[0])
        db.execute(f"CREATE TABLE {table} ({', '.join(cols)})")
        db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(cols))})",
                       [[json.dumps(r[c]) if isinstance(r[c], list) else r[c] for c in cols]
                        for r in rows])
    assignment, metric, counts = readme_sql()
    viewed = db.execute(assignment).fetchall()
    assert [(u, e, v) for u, _, e, v, _, _ in viewed] == \
        [(e.user_id, e.experiment_key, e.variation_id) for e in exposures]
    clicks = db.execute(metric).fetchall()
    assert len(clicks) == sum(o.kind == "click" for o in outcomes)
    result = readout(exposures, outcomes, EXP)
    assert db.execute(counts).fetchall() == [(a.variation_id, a.users, a.converted)
                                             for a in result.arms]
    assert result.users_in_several_arms == 1
