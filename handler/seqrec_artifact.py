"""The export format (docs/export-format.md) in one module: file names, sha256, format version,
metadata.json, load-time verification and the raw item id <-> item index map.

    python -m handler.seqrec_artifact verify artifacts/demo   # prints the model_version, or one line, exit 1

    meta = verify_export(export_dir)          # format version + sha256 of every file, or ExportError
    index = ItemIndex.read(export_dir, meta)  # item_id column of items.parquet
    index.lookup(["12", None]), index.decode([1, 2])

Training writes it (train/export.py, train/catalog.py), archive.sh and the handler read it. Only the
standard library, numpy and pandas: archive.sh runs this file before anything needs torch, and the
.mar carries it flat beside the handler, so it imports none of its siblings.

Bump FORMAT_VERSION when a change to these files or to the scripted model's methods means this
code cannot serve an export written before it (e.g. a new `encode_events` argument): every older
export is then refused at load and by archive.sh, with a message to re-export it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import pandas as pd

# Format 1: exports with no format_version (before this module). 2: format_version in metadata.json.
# 3: an optional candidate index (INDEX_FILE, described by metadata's "index"). A format 2 export is
# still served, by exact scoring: it simply has no index.
FORMAT_VERSION = 3
READABLE_FORMATS = (2, 3)
MODEL_FILE, VECTORS_FILE, ITEMS_FILE, METADATA_FILE = "model.pt", "item_vectors.npy", "items.parquet", "metadata.json"
INDEX_FILE = "candidates.faiss"
DATA_FILES = (MODEL_FILE, VECTORS_FILE, ITEMS_FILE)  # each must be listed in metadata.json with its sha256
OPTIONAL_FILES = (INDEX_FILE,)  # listed (and so verified) whenever present
ID_TYPES = ("int", "str")


class ExportError(RuntimeError):
    """An export directory this code cannot use (incomplete, corrupt, or of another format)."""


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- metadata.json
def write_metadata(export_dir, meta: Dict[str, Any]) -> Dict[str, Any]:
    """Write metadata.json with this format_version and the sha256 of every data file (all must
    exist). Atomic: a reader sees the old file or the new one, never half of one."""
    d = Path(export_dir)
    out = {"format_version": FORMAT_VERSION, **{k: v for k, v in meta.items() if k not in ("format_version", "files")}}
    out["files"] = {name: sha256_file(d / name) for name in DATA_FILES + OPTIONAL_FILES
                    if name in DATA_FILES or (d / name).is_file()}
    if index_kind(out) != "none" and INDEX_FILE not in out["files"]:
        raise ExportError(f"seqrec: metadata says index {index_kind(out)!r} but {d / INDEX_FILE} does not exist")
    text = json.dumps(out, indent=2, default=_jsonable)
    fd, tmp = tempfile.mkstemp(prefix=f".{METADATA_FILE}.", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, d / METADATA_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def read_metadata(export_dir) -> Dict[str, Any]:
    """metadata.json as a dict; missing or not a JSON object is an ExportError."""
    path = Path(export_dir) / METADATA_FILE
    if not path.is_file():
        raise ExportError(f"seqrec: {METADATA_FILE} missing from {path.parent}; is this a training export "
                          f"(docs/export-format.md) or an archive built by archive.sh?")
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise ExportError(f"seqrec: {path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ExportError(f"seqrec: {path} must hold a JSON object, got {type(meta).__name__}")
    return meta


def index_kind(meta: Dict[str, Any]) -> str:
    """The kind of candidate index the export carries ("none" for format 2 or a small catalogue)."""
    index = meta.get("index")
    return str(index.get("kind", "none")) if isinstance(index, dict) else "none"


def check_format(meta: Dict[str, Any], where) -> None:
    """Refuse an export of a format this code does not read, saying what to do about it."""
    version = meta.get("format_version", 1)
    if type(version) is int and version in READABLE_FORMATS:
        return
    has = "format 1 (metadata.json has no format_version)" if "format_version" not in meta else f"format {version!r}"
    newer = " or serve it with the newer seqrec that wrote it" if type(version) is int and version > FORMAT_VERSION else ""
    raise ExportError(f"seqrec: {where} is export {has}; this seqrec reads formats "
                      f"{'-'.join(map(str, (READABLE_FORMATS[0], READABLE_FORMATS[-1])))} only. "
                      f"Re-export it with `python -m train ... --out DIR` from this seqrec version (a catalogue "
                      f"update: rebuild it from the re-exported base with `python -m train.catalog`){newer}")


def verify_export(export_dir) -> Dict[str, Any]:
    """metadata.json, checked: a known format_version, every data file listed, and every listed file
    present with its sha256. A corrupt, incomplete or foreign export fails here, at load, never at
    the first request. Returns the metadata."""
    d = Path(export_dir)
    meta = read_metadata(d)
    check_format(meta, d)
    files = meta.get("files")
    if not isinstance(files, dict):
        files = {}
    unlisted = [f for f in DATA_FILES if f not in files]
    if index_kind(meta) != "none" and INDEX_FILE not in files:
        unlisted.append(INDEX_FILE)
    if unlisted:
        raise ExportError(f"seqrec: {METADATA_FILE} in {d} lists no sha256 for {unlisted}")
    for name, expected in files.items():
        path = d / name
        if not path.is_file():
            raise ExportError(f"seqrec: {name} (listed in {METADATA_FILE}) is missing from {d}")
        actual = sha256_file(path)
        if actual != expected:
            raise ExportError(f"seqrec: sha256 mismatch for {name}: {METADATA_FILE} says {expected}, "
                              f"file has {actual}; the export is corrupt or was edited")
    return meta


# ---- the id map
class ItemIndex:
    """Raw item id <-> item index 1..N; 0 is padding and "unknown". Raw ids keep their type (int64
    or str). A pandas Index is the lookup: hash-based and array-backed, so 2M ids cost tens of MB,
    not a Python dict's hundreds."""

    def __init__(self, ids: Iterable):
        self.ids = pd.Index(ids)
        if not self.ids.is_unique:
            raise ValueError("item ids must be unique")
        if len(self.ids) and not (pd.api.types.is_integer_dtype(self.ids) or self.ids.dtype == object
                                  or pd.api.types.is_string_dtype(self.ids)):
            raise TypeError(f"item ids must be int or str, got {self.ids.dtype}")
        self.raw_ids = self.ids.to_numpy()  # decode's array, made once

    @classmethod
    def from_items(cls, item_ids: Iterable) -> "ItemIndex":
        """Sorted unique ids, so the same data always gives the same indices."""
        return cls(np.sort(pd.unique(pd.Series(item_ids))))

    @classmethod
    def read(cls, export_dir, meta: Optional[Dict[str, Any]] = None) -> "ItemIndex":
        """The item_id column of items.parquet (row j is index j + 1), checked against metadata's
        item_id_type and num_items when given."""
        path = Path(export_dir) / ITEMS_FILE
        try:
            index = cls(pd.read_parquet(path, columns=["item_id"])["item_id"])
        except (ValueError, TypeError) as e:
            raise ExportError(f"seqrec: {path}: {e}") from None
        meta = meta or {}
        id_type = meta.get("item_id_type")
        if id_type is not None and id_type not in ID_TYPES:
            raise ExportError(f"seqrec: item_id_type must be 'int' or 'str', got {id_type!r}")
        if id_type is not None and len(index) and id_type != index.id_type:
            raise ExportError(f"seqrec: {METADATA_FILE} says item_id_type {id_type!r}, {ITEMS_FILE} holds "
                              f"{index.id_type} ids ({index.ids.dtype})")
        if meta.get("num_items") is not None and int(meta["num_items"]) != len(index):
            raise ExportError(f"seqrec: {METADATA_FILE} says {meta['num_items']} items, {ITEMS_FILE} has {len(index)}")
        return index

    @property
    def id_type(self) -> str:
        return "int" if pd.api.types.is_integer_dtype(self.ids) else "str"

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, raw) -> np.ndarray:
        """Raw ids of the training data -> indices 1..N; unknown ids -> 0."""
        return self.ids.get_indexer(pd.Index(raw)).astype(np.int64) + 1

    def lookup(self, ids: List[Any]) -> np.ndarray:
        """Request ids already in this index's type (seqrec_contract.normalise_ids; None = cannot be
        in the index) -> indices 1..N, 0 = unknown."""
        out = np.zeros(len(ids), dtype=np.int64)
        keep = [i for i, x in enumerate(ids) if x is not None]
        if keep:
            target = np.array([ids[i] for i in keep], dtype=np.int64 if self.id_type == "int" else object)
            out[keep] = self.ids.get_indexer(target).astype(np.int64) + 1
        return out

    def decode(self, idx) -> list:
        """Indices 1..N -> raw ids as Python int or str (what JSON needs)."""
        return self.raw_ids[np.asarray(idx, dtype=np.int64) - 1].tolist()


def _jsonable(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m handler.seqrec_artifact",
                                 description="Check an export directory (docs/export-format.md).")
    sub = ap.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="format version and sha256 of every file; prints the model_version")
    verify.add_argument("export_dir")
    files = sub.add_parser("files", help="the data files metadata.json lists, one a line (archive.sh, after verify)")
    files.add_argument("export_dir")
    args = ap.parse_args(argv)
    try:
        if args.command == "files":  # no second pass of sha256 over a 2M-item export
            print("\n".join(sorted(read_metadata(args.export_dir).get("files") or {})))
            return 0
        meta = verify_export(args.export_dir)
        version = str(meta.get("model_version") or "")
        if not version:
            raise ExportError(f"seqrec: {Path(args.export_dir) / METADATA_FILE} has no model_version")
    except (ExportError, OSError) as e:
        print(str(e).replace("\n", " "), file=sys.stderr)
        return 1
    print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
