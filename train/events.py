"""Load an event log into the canonical schema, counting everything dropped on the way.

    from train.events import ColumnMap, load_events
    events, report = load_events("log.parquet", ColumnMap(user_id="uid", item_id="aid", timestamp="ts"),
                                 timestamp_unit="ms")
    log.info("dropped %s", report.to_dict())

Canonical schema, one row per event, sorted by (user_id, timestamp, item_id) with a fresh RangeIndex:

    user_id     int64 or str   raw id; integer-like ids become int64, anything else str (never 12.0)
    item_id     int64 or str   same rule
    timestamp   float64        unix seconds (numbers scaled by `timestamp_unit`; datetime strings parsed,
                               ISO 8601 best, naive ones taken as UTC)
    event_type  str            optional
    source      str            optional
    strength    float64        optional: interaction strength, e.g. a rating; NaN where missing or not a
                               number (such values are counted in a warning, the event is kept)
    ...                        any other input column, unchanged

Bad rows are never dropped silently: each dropped row is counted once in a `DropReport`, under the
first reason that applies, in this order: null user, null item, unparsable (or missing) timestamp,
exact duplicate of an earlier (user_id, item_id, timestamp, event_type) event (the first is kept).
A CSV line with more fields than the header is skipped and counted as extra["malformed_line"] (in
such a file, so are lines with fewer fields; in others those become rows with missing values).

Scale: Parquet (a file, or a directory of part files as train.synthetic_scale writes them: DIR/events/
part-*.parquet beside DIR/items.parquet) is read with pyarrow.dataset, only the columns asked for
(`extra_columns=False`: the canonical ones), dictionary columns arriving as categoricals. Labels stay
categorical (codes, not one string per event). Rows are filtered, sorted (np.lexsort on integer ids,
stable) and deduplicated on index arrays, and the table is gathered once at the end.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from .errors import UserError

log = logging.getLogger(__name__)

REQUIRED = ("user_id", "item_id", "timestamp")
LABELS = ("event_type", "source")
OPTIONAL = (*LABELS, "strength")
SORT_KEYS = ["user_id", "timestamp", "item_id"]
_UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
# A canonical decimal integer that fits int64: no leading zeros ("007" stays a string id), no "12.0".
_INT_PATTERN = r"-?(?:0|[1-9][0-9]{0,17})"


@dataclass
class DropReport:
    """Rows read and rows dropped, by reason. `extra` holds drops for other named reasons."""

    rows_read: int = 0
    unparsable_timestamp: int = 0
    null_user: int = 0
    null_item: int = 0
    duplicates: int = 0
    extra: Dict[str, int] = field(default_factory=dict)

    @property
    def total_dropped(self) -> int:
        return (self.unparsable_timestamp + self.null_user + self.null_item + self.duplicates
                + sum(self.extra.values()))

    @property
    def rows_kept(self) -> int:
        return self.rows_read - self.total_dropped

    def to_dict(self) -> Dict[str, object]:
        """Flat JSON-ready dict for the training summary."""
        out: Dict[str, object] = dataclasses.asdict(self)
        out["total_dropped"] = self.total_dropped
        return out

    def merge(self, other: "DropReport") -> "DropReport":
        """A new report with the counts of both (e.g. two files of one dataset)."""
        extra = dict(self.extra)
        for reason, n in other.extra.items():
            extra[reason] = extra.get(reason, 0) + n
        return DropReport(
            rows_read=self.rows_read + other.rows_read,
            unparsable_timestamp=self.unparsable_timestamp + other.unparsable_timestamp,
            null_user=self.null_user + other.null_user,
            null_item=self.null_item + other.null_item,
            duplicates=self.duplicates + other.duplicates,
            extra=extra,
        )


@dataclass(frozen=True)
class ColumnMap:
    """Input column name for each canonical column; None for an optional column means "not present"."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    event_type: Optional[str] = "event_type"
    source: Optional[str] = "source"
    strength: Optional[str] = "strength"


ITEMS_PART = "items.parquet"  # in a directory of parts: the item table, not events


def parquet_parts(path: Union[str, Path]) -> Tuple[List[Path], Optional[Path]]:
    """A Parquet directory -> (its event part files, sorted; DIR/items.parquet or None). Events are
    DIR/events/**/*.parquet when DIR/events exists, else every *.parquet below DIR but the item table."""
    root = Path(path)
    items = root / ITEMS_PART
    base = root / "events" if (root / "events").is_dir() else root
    parts = sorted(p for p in base.rglob("*") if p.suffix.lower() in (".parquet", ".pq") and p != items)
    if not parts:
        raise UserError(f"{str(root)!r}: a directory without Parquet event files (*.parquet)")
    return parts, items if items.is_file() else None


def is_parquet(path: Union[str, Path]) -> bool:
    return Path(path).is_dir() or str(path).lower().endswith((".parquet", ".pq"))


def read_parquet(path: Union[str, Path], columns: Optional[Sequence[str]] = None,
                 wanted: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """A Parquet file or directory of parts, with pyarrow.dataset. columns: exactly these; wanted:
    those of them the files have (None: every column)."""
    files = parquet_parts(path)[0] if Path(path).is_dir() else [Path(path)]
    data = pads.dataset([str(f) for f in files], format="parquet")
    if wanted is not None:
        columns = [c for c in data.schema.names if c in set(wanted)]
    # The system allocator hands freed read buffers back at once (arrow's default pool keeps them,
    # which at 30M events adds a gigabyte to the peak of the steps that follow).
    pool = pa.system_memory_pool()
    table = data.scanner(columns=list(columns) if columns is not None else None, memory_pool=pool).to_table()
    return table.to_pandas(split_blocks=True, self_destruct=True, memory_pool=pool)


def read_table(path: Union[str, Path], **kwargs) -> pd.DataFrame:
    """CSV (optionally compressed) or Parquet (a file or a directory of parts), chosen by extension;
    UserError for a missing file or an unknown extension."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such file: {str(path)!r}")
    name = path.name.lower()
    if is_parquet(path):
        return read_parquet(path, **kwargs)
    if any(name.endswith(ext) for ext in (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz")):
        return pd.read_csv(path, **kwargs)
    raise UserError(f"cannot tell the format of {path}: expected .csv[.gz|.bz2|.zip|.xz] or .parquet")


def load_events(
    path_or_df: Union[str, Path, pd.DataFrame],
    columns: ColumnMap = ColumnMap(),
    timestamp_unit: str = "s",
    *,
    name: Optional[str] = None,
    extra_columns: bool = True,
) -> Tuple[pd.DataFrame, DropReport]:
    """Read (or take) an event log and return it in the canonical schema with its DropReport.

    `timestamp_unit` ("s", "ms", "us", "ns") applies to numeric timestamps; datetime strings and
    datetime columns carry their own unit. A DataFrame passed in is not modified.
    `name` labels the input in log lines and errors (default: the path, or "DataFrame").
    `extra_columns=False` keeps (and, from Parquet, reads) only the canonical columns.
    """
    if timestamp_unit not in _UNIT_SECONDS:
        raise ValueError(f"timestamp_unit must be one of {sorted(_UNIT_SECONDS)}, got {timestamp_unit!r}")
    malformed: list = []  # CSV lines with more fields than the header, skipped
    if isinstance(path_or_df, pd.DataFrame):
        raw, origin = path_or_df, name or "DataFrame"
    else:
        # Ids are read as text so that "007" and ids in a column with gaps keep their exact spelling.
        as_text = {columns.user_id: str, columns.item_id: str}
        origin = name or str(path_or_df)
        wanted = None if extra_columns else [c for c in dataclasses.astuple(columns) if c is not None]
        try:
            raw = (read_table(path_or_df, wanted=wanted) if is_parquet(path_or_df)
                   else _read_csv(path_or_df, as_text, malformed))
        except _UNREADABLE as e:
            raise UserError(f"{origin}: cannot read the event log: {e}") from None

    mapping = _resolve_columns(raw, columns, origin)
    df = raw.rename(columns={src: dst for dst, src in mapping.items()})
    if not extra_columns:
        df = df[list(mapping)]
    report = DropReport(rows_read=len(df) + len(malformed))
    if malformed:
        report.extra["malformed_line"] = len(malformed)

    user = _normalise_ids(df["user_id"])
    item = _normalise_ids(df["item_id"])
    ts = to_unix_seconds(df["timestamp"], timestamp_unit)
    df = df.assign(user_id=user, item_id=item, timestamp=ts)
    for col in LABELS:
        if col in mapping:
            df[col] = _labels(df[col])
    if "strength" in mapping:
        df["strength"] = _strengths(df["strength"], origin)

    null_user = user.isna()
    null_item = item.isna() & ~null_user
    bad_ts = ts.isna() & ~null_user & ~null_item
    report.null_user, report.null_item = int(null_user.sum()), int(null_item.sum())
    report.unparsable_timestamp = int(bad_ts.sum())
    keep = np.flatnonzero(~(null_user | null_item | bad_ts).to_numpy())

    # Typed ids of the kept rows, their stable sort order, and the duplicates among them (only rows
    # equal on all three sort keys can be duplicates, and the stable sort keeps them in input order).
    if len(keep) < len(df):
        user, item = user.iloc[keep], item.iloc[keep]
    user = _finish_ids(user).reset_index(drop=True)
    item = _finish_ids(item).reset_index(drop=True)
    ts = ts.to_numpy()[keep]
    order = _sort_order(user, ts, item)
    rows = keep[order]  # input row of each sorted one
    u, t, i = user.to_numpy()[order], ts[order], item.to_numpy()[order]
    del order, keep, ts  # a 30M-event log: each of these is 240 MB
    dup = _duplicates(u, t, i, df["event_type"] if "event_type" in df.columns else None, rows)
    report.duplicates = int(dup.sum())
    first = ~dup
    out = {"user_id": pd.Series(u[first], dtype=user.dtype), "item_id": pd.Series(i[first], dtype=item.dtype),
           "timestamp": pd.Series(t[first])}
    del u, t, i
    rows = rows[first]
    front = [c for c in (*REQUIRED, *OPTIONAL) if c in df.columns]
    for c in front[3:] + [c for c in df.columns if c not in front]:
        col = df[c].take(rows).reset_index(drop=True)
        out[c] = col.cat.remove_unused_categories() if isinstance(col.dtype, pd.CategoricalDtype) else col
    df = pd.DataFrame(out, copy=False)

    u = df["user_id"].to_numpy()
    users = int(len(u) > 0) + int(np.count_nonzero(u[1:] != u[:-1]))  # sorted: one run per user
    log.info("loaded %d events from %s (%d users, %d items)", len(df), origin, users, df["item_id"].nunique())
    if report.total_dropped:
        log.warning("dropped %d of %d rows from %s: %s", report.total_dropped, report.rows_read, origin,
                    report.to_dict())
    return df, report


# What a file that is not a readable table raises (permissions, a folder, binary junk, no header).
_UNREADABLE = (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, pa.ArrowException)


def _read_csv(path, dtype, malformed: list) -> pd.DataFrame:
    """The fast C parser for a well-formed file. A line with more fields than the header makes it
    raise, or, when it is the first data line, silently shift every column (pandas takes the extra
    field for an index; index_col=False turns that into a ParserWarning, raised here). Either way
    the file is read again by pyarrow, which skips every line whose field count is not the
    header's and appends it to `malformed`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return read_table(path, dtype=dtype, index_col=False)
    except (pd.errors.ParserError, pd.errors.ParserWarning) as e:
        log.warning("%s: %s; reading it again, skipping malformed lines", path, str(e).strip())

    def skip(row):
        malformed.append(row.text)
        return "skip"

    return read_table(path, dtype=dtype, engine="pyarrow", on_bad_lines=skip)


def _sort_order(user: pd.Series, ts: np.ndarray, item: pd.Series) -> np.ndarray:
    """Positions in (user_id, timestamp, item_id) order; rows equal on all three keep input order."""
    if pd.api.types.is_integer_dtype(user) and pd.api.types.is_integer_dtype(item):
        return np.lexsort((item.to_numpy(), ts, user.to_numpy()))  # stable, and fast on sorted input
    keys = pd.DataFrame({"u": user, "t": ts, "i": item})
    return keys.sort_values(["u", "t", "i"], kind="stable").index.to_numpy()


def _duplicates(user: np.ndarray, ts: np.ndarray, item: np.ndarray, event_type: Optional[pd.Series],
                rows: np.ndarray) -> np.ndarray:
    """Sorted keys (event_type: the input column, rows: the input row of each sorted one) -> True
    for a repeat of an earlier (user_id, item_id, timestamp, event_type)."""
    if len(user) == 0:
        return np.zeros(0, dtype=bool)
    same = (user[1:] == user[:-1]) & (ts[1:] == ts[:-1]) & (item[1:] == item[:-1])
    if event_type is None:
        return np.r_[False, same]
    dup = np.zeros(len(user), dtype=bool)
    tied = np.flatnonzero(np.r_[False, same] | np.r_[same, False])  # rows in a run of equal keys
    if len(tied):
        run = np.cumsum(~np.r_[False, same][tied])  # which run each tied row belongs to
        keys = pd.DataFrame({"run": run, "event_type": event_type.iloc[rows[tied]].to_numpy()})
        dup[tied] = keys.duplicated(keep="first").to_numpy()
    return dup


def _labels(values: pd.Series) -> pd.Series:
    """Event labels as text, missing values kept missing. A categorical column stays one (its
    categories become text), so 30M labels cost codes, not strings."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        names = [str(c) for c in values.cat.categories]
        if len(set(names)) == len(names):
            return values.cat.rename_categories(names)
        values = values.astype(object)
    return values.where(values.isna(), values.astype(str))


def _strengths(values: pd.Series, origin: str) -> pd.Series:
    """float64; NaN (the model's "unknown" strength) for missing values and for anything that is not
    a finite number, which is logged with a count rather than dropping the event."""
    if pd.api.types.is_bool_dtype(values):  # as over HTTP: true is not a number
        values = pd.Series(np.nan, index=values.index).where(values.isna(), "bool")
    out = pd.to_numeric(values, errors="coerce").astype("float64")
    out = out.where(np.isfinite(out))
    bad = int((out.isna() & values.notna()).sum())
    if bad:
        log.warning("%s: %d strength values are not finite numbers; those events keep an unknown strength",
                    origin, bad)
    return out


def _resolve_columns(df: pd.DataFrame, columns: ColumnMap, origin: str) -> Dict[str, str]:
    """canonical name -> input name, for required columns and the optional ones present."""
    available = [str(c) for c in df.columns]
    mapping: Dict[str, str] = {}
    for canon in REQUIRED:
        src = getattr(columns, canon)
        if src not in df.columns:
            raise UserError(f"{origin}: required column {src!r} (for {canon}) is missing; "
                             f"available columns: {available}")
        mapping[canon] = src
    for canon in OPTIONAL:
        src = getattr(columns, canon)
        if src is not None and src in df.columns:
            mapping[canon] = src
    sources = set(mapping.values())
    if len(sources) < len(mapping):
        raise UserError(f"{origin}: one input column mapped to several canonical columns: {mapping}")
    for canon, src in mapping.items():
        # e.g. mapping user_id <- session_id while an unrelated user_id column exists: refuse to guess.
        if canon != src and canon in df.columns and canon not in sources:
            raise UserError(f"{origin}: column {canon!r} would be overwritten by {src!r}; "
                             f"rename or drop {canon!r} first")
    return mapping


def to_unix_seconds(values: pd.Series, unit: str = "s") -> pd.Series:
    """float64 unix seconds; NaN where a value cannot be read as a time."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return _datetimes_to_seconds(values)
    if pd.api.types.is_bool_dtype(values):
        return pd.Series(np.nan, index=values.index)
    if pd.api.types.is_numeric_dtype(values):
        out = values.astype("float64")
        if _UNIT_SECONDS[unit] != 1.0:
            out = out * _UNIT_SECONDS[unit]
        finite = np.isfinite(out.to_numpy())
        return out if finite.all() else out.where(finite)  # no second copy of a clean column
    # Text or mixed: numbers first, then datetime strings for whatever did not parse as a number.
    out = pd.to_numeric(values, errors="coerce").astype("float64") * _UNIT_SECONDS[unit]
    out = out.where(np.isfinite(out))
    rest = out.isna() & values.notna()
    if rest.any():
        text = values[rest].astype(str)
        parsed = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
        retry = parsed.isna()
        if retry.any():  # not ISO 8601: parse one by one (ambiguous dates are read month first)
            parsed[retry] = pd.to_datetime(text[retry], errors="coerce", utc=True, format="mixed")
        out[rest] = _datetimes_to_seconds(parsed)
    return out


def _datetimes_to_seconds(values: pd.Series) -> pd.Series:
    if getattr(values.dt, "tz", None) is None:
        values = values.dt.tz_localize("UTC")
    # Timedelta division is independent of the column's resolution (ns in pandas 2, often us in 3).
    return (values - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)


def _normalise_ids(values: pd.Series) -> pd.Series:
    """Ids as int64-valued or str-valued objects, with blanks and NaN as missing (typed later)."""
    if pd.api.types.is_integer_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("Int64") if values.hasnans else values.astype("int64")
    if pd.api.types.is_float_dtype(values):
        finite = values.dropna()
        if ((finite % 1 == 0) & (finite.abs() < 2**63)).all():
            return values.astype("Int64")  # 12.0 came from a NaN in an int column: the id is 12
        return values.map(lambda v: v if pd.isna(v) else repr(float(v)))
    if pd.api.types.infer_dtype(values, skipna=True) in ("integer", "floating", "mixed-integer-float"):
        return _normalise_ids(pd.to_numeric(values))  # Python numbers in an object column
    # Text or mixed objects: everything as str; empty or all-blank strings are missing ids.
    text = values.astype(str)
    return text.mask(values.isna() | (text.str.strip() == ""))


def _finish_ids(values: pd.Series) -> pd.Series:
    """Final id dtype once nulls are gone: int64 if every id is an integer, else str."""
    if pd.api.types.is_integer_dtype(values):
        return values.astype("int64")
    text = values.astype(str)
    if len(text) and text.str.fullmatch(_INT_PATTERN).all():
        return text.astype("int64")
    return text
