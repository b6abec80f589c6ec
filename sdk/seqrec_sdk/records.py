"""Exposure and outcome records on disk, for a warehouse: JSON lines or Parquet.

    from seqrec_sdk.records import JsonLinesWriter, ParquetWriter
    exposures = ParquetWriter("exposures.parquet", Exposure)        # or JsonLinesWriter(path)
    client = Client(url, experiments=source, on_exposure=exposures.write)
    clicks = JsonLinesWriter("outcomes.jsonl")
    clicks.write(Outcome(rec_id, item_id, "click", timestamp=time.time(), user_id=uid))
    ...
    exposures.close(); clicks.close()

Both writers are thread-safe (``on_exposure`` runs on the request threads) and context
managers. JSON lines are :meth:`Exposure.to_dict` / :meth:`Outcome.to_dict`, one per line,
flushed per record, timestamps in unix seconds. Parquet has a fixed schema per record type
(:data:`PARQUET_COLUMNS`): timestamps are ``timestamp[us, UTC]``, item ids strings (the HTTP
contract lets 42 and "42" name one item). Parquet needs ``pyarrow``, imported when a
:class:`ParquetWriter` is created, never with the SDK.
"""

from __future__ import annotations

import datetime as _dt
import json
import threading
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Type, Union

from .models import Exposure, Outcome

__all__ = ["JsonLinesWriter", "ParquetWriter", "read_jsonl", "read_parquet", "PARQUET_COLUMNS"]

Record = Union[Exposure, Outcome]
PathLike = Union[str, Path]

# column -> Arrow type name; the documented warehouse shape (README, "Exposures and outcomes")
PARQUET_COLUMNS: Dict[str, Dict[str, str]] = {
    "exposure": {
        "timestamp": "timestamp[us, UTC]",
        "experiment_key": "string",
        "variation_id": "string",
        "variant": "string",
        "user_id": "string",
        "model_version": "string",
        "recommendation_id": "string",
        "item_ids": "list<string>",
        "fallback": "bool",
    },
    "outcome": {
        "timestamp": "timestamp[us, UTC]",
        "recommendation_id": "string",
        "item_id": "string",
        "kind": "string",
        "user_id": "string",
        "value": "double",
    },
}
_KINDS: Dict[type, str] = {Exposure: "exposure", Outcome: "outcome"}


def _utc(seconds: Any) -> Any:
    if seconds is None:
        return None
    return _dt.datetime.fromtimestamp(float(seconds), tz=_dt.timezone.utc)


class JsonLinesWriter:
    """Appends one JSON object per record (anything with ``to_dict()``, or a dict)."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: Union[Record, Mapping[str, Any]]) -> None:
        row = record.to_dict() if hasattr(record, "to_dict") else dict(record)  # type: ignore[union-attr]
        line = json.dumps(row, separators=(",", ":"), ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()  # a crashed process keeps every record it logged

    def write_many(self, records: Iterable[Union[Record, Mapping[str, Any]]]) -> None:
        for r in records:
            self.write(r)

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> "JsonLinesWriter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _arrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("ParquetWriter needs pyarrow: pip install pyarrow "
                          "(or log JSON lines with JsonLinesWriter)") from e
    return pa, pq


def _arrow_type(pa: Any, name: str) -> Any:
    return {
        "timestamp[us, UTC]": pa.timestamp("us", tz="UTC"),
        "string": pa.string(),
        "list<string>": pa.list_(pa.string()),
        "bool": pa.bool_(),
        "double": pa.float64(),
    }[name]


class ParquetWriter:
    """Buffers records of one type (``Exposure`` or ``Outcome``) and writes a row group every
    ``rows_per_group`` records and at :meth:`close` (a file with no rows still has the schema).
    Records not yet flushed are lost if the process dies: for a long-running backend, write JSON
    lines and convert, or close and rotate files often."""

    def __init__(self, path: PathLike, record_type: Type[Record] = Exposure,
                 rows_per_group: int = 10_000) -> None:
        if record_type not in _KINDS:
            raise TypeError(f"record_type must be Exposure or Outcome, got {record_type!r}")
        if rows_per_group < 1:
            raise ValueError("rows_per_group must be >= 1")
        pa, pq = _arrow()
        self.path = Path(path)
        self.record_type = record_type
        columns = PARQUET_COLUMNS[_KINDS[record_type]]
        self._pa = pa
        self._schema = pa.schema([(c, _arrow_type(pa, t)) for c, t in columns.items()])
        self._rows_per_group = rows_per_group
        self._lock = threading.Lock()
        self._buffer: List[Dict[str, Any]] = []
        self._writer = pq.ParquetWriter(str(self.path), self._schema)
        self._closed = False

    def write(self, record: Union[Record, Mapping[str, Any]]) -> None:
        if isinstance(record, Mapping):
            record = self.record_type.from_dict(record)
        if not isinstance(record, self.record_type):
            raise TypeError(f"this writer takes {self.record_type.__name__} records, "
                            f"got {type(record).__name__}")
        row = self._row(record)
        with self._lock:
            if self._closed:
                raise ValueError(f"{self.path} is closed")
            self._buffer.append(row)
            if len(self._buffer) >= self._rows_per_group:
                self._flush()

    def write_many(self, records: Iterable[Union[Record, Mapping[str, Any]]]) -> None:
        for r in records:
            self.write(r)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._flush()
            self._writer.close()
            self._closed = True

    def __enter__(self) -> "ParquetWriter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _row(self, r: Record) -> Dict[str, Any]:
        row = r.to_dict()
        row["timestamp"] = _utc(row["timestamp"])
        if isinstance(r, Exposure):
            row["item_ids"] = [str(i) for i in r.item_ids]
        else:
            row["item_id"] = str(r.item_id)
        return row

    def _flush(self) -> None:
        if self._buffer:
            table = self._pa.Table.from_pylist(self._buffer, schema=self._schema)
            self._writer.write_table(table)
            self._buffer = []


def read_jsonl(path: PathLike) -> Iterator[Dict[str, Any]]:
    """The records of a JSON-lines file, as dicts (what :mod:`seqrec_sdk.readout` takes)."""
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as e:
                    raise ValueError(f"{path}:{n}: not a JSON line: {e}") from e


def read_parquet(path: PathLike) -> List[Dict[str, Any]]:
    """The rows of a file written by :class:`ParquetWriter`, timestamps back to unix seconds."""
    _, pq = _arrow()
    rows = pq.read_table(str(path)).to_pylist()
    for row in rows:
        ts = row.get("timestamp")
        row["timestamp"] = ts.timestamp() if ts is not None else None
    return rows
