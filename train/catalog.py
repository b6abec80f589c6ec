"""Catalogue updates without retraining: rebuild an export directory's candidate index from a new
item table, ready to archive as a new model version.

    python -m train.catalog --export artifacts/demo --items new_items.csv --out artifacts/demo-1.1 --version 1.1
    ./archive.sh artifacts/demo-1.1

The item table (CSV or Parquet) has `item_id`, any content columns the model was trained with
(metadata.json `model_config.content_*`, e.g. category, price, title), and optionally `available`.
Each row updates or adds one item:
- a known item: its columns and `available` (default true: a listed item is live) are updated;
  with a content model its content too, so e.g. a new price moves its vector;
- a new item: appended after the trained ones (indices N+1, ...) with popularity 0 and a vector
  from its content alone. That needs a model trained with `model.use_content=true`; an id-only
  model cannot represent an unseen item, so such rows are counted as skipped and left out;
- `available` false (sold): the item stays in the index, so histories holding it still work, but
  it is never recommended.
With --snapshot the table is the whole live catalogue: known items absent from it become unavailable.

The scripted model carries every item's content ids (SequenceModel.set_item_content), so with a
content model model.pt is rewritten too; item vectors come from its own item_matrix(), and content
ids from train.content, exactly as at training. The source export must verify (its format
version and sha256, handler.seqrec_artifact.verify_export); metadata.json gets the new version, this
seqrec's format_version, fresh sha256 of every file and a `catalog_update` record; its metrics stay
those of the training run.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pandas as pd
import torch

from handler import seqrec_index
from handler.seqrec_artifact import INDEX_FILE, ITEMS_FILE, MODEL_FILE, VECTORS_FILE, verify_export, write_metadata
from model import ModelConfig

from .content import categorical_values, encode_content
from .errors import UserError, cli_error
from .events import read_table

log = logging.getLogger(__name__)


def _ids(raw: pd.Series, id_type: str) -> pd.Series:
    """Raw ids in the export's id type; an id that cannot be one is an error naming it."""
    if id_type == "str":
        return raw.astype(str)
    num = pd.to_numeric(raw, errors="coerce")
    bad = raw[num.isna() | (num != num.round())]
    if len(bad):
        raise ValueError(f"item_id must be integers for this export; got e.g. {bad.iloc[0]!r} ({len(bad)} rows)")
    return num.astype("int64")


def _like(column: pd.Series, values: pd.Series) -> pd.Series:
    """New cells shaped like the existing column: list columns (e.g. genres) get lists."""
    first = column.dropna()
    if len(first) and isinstance(first.iloc[0], (list, tuple, np.ndarray)):
        return values.map(categorical_values)
    return values


def rebuild(export_dir, items: pd.DataFrame, out_dir, version: str, snapshot: bool = False,
            source: str = "") -> Dict[str, Any]:
    """Write the updated export to out_dir (never in place). Returns the catalog_update record."""
    src, out = Path(export_dir), Path(out_dir)
    if src.resolve() == out.resolve():
        raise ValueError("--out must be a new directory: an export is never changed in place")
    if not version:
        raise ValueError("a catalogue update needs a new --version")
    meta = verify_export(src)  # never build on a corrupt export or one of another format
    if "item_id" not in items:
        raise ValueError(f"item table has no 'item_id' column (columns: {list(items.columns)})")
    table = pd.read_parquet(src / ITEMS_FILE)
    vectors = base_vectors = np.load(src / VECTORS_FILE, allow_pickle=False)
    mc = ModelConfig.from_dict(meta["model_config"])

    upd = items.copy()
    upd["item_id"] = _ids(upd["item_id"], meta.get("item_id_type", "int"))
    dup = upd["item_id"].duplicated(keep="last")
    if dup.any():
        log.warning("catalog: %d duplicate item ids in the update; the last row of each wins", int(dup.sum()))
        upd = upd[~dup]
    upd["available"] = upd["available"].fillna(True).astype(bool) if "available" in upd else True
    pos = pd.Index(table["item_id"]).get_indexer(upd["item_id"])
    known, new = upd[pos >= 0], upd[pos < 0]
    skipped = 0
    if len(new) and not mc.use_content:
        skipped = len(new)
        log.warning("catalog: %d new items skipped: the model has no content encoder (train with "
                    "model.use_content=true to add items without retraining)", skipped)
        new = new.iloc[:0]

    extra = [c for c in upd.columns if c not in ("item_id", "popularity")]
    for c in extra:
        if c not in table:
            table[c] = pd.Series([None] * len(table), dtype=object) if c != "available" else True
    rows = pos[pos >= 0]
    base_available = table["available"].fillna(True).astype(bool).to_numpy()
    before_unavailable = int((~base_available).sum())
    for c in extra:
        vals = _like(table[c], known[c]).tolist()
        col = table[c].astype(object)
        col.iloc[rows] = pd.Series(vals, dtype=object).to_numpy()
        table[c] = col.infer_objects()
    if snapshot:
        listed = np.zeros(len(table), dtype=bool)
        listed[rows] = True
        table.loc[~listed, "available"] = False
    added = new.reindex(columns=table.columns)
    added["popularity"] = 0
    for c in added.columns:
        if c in new:
            added[c] = _like(table[c], new[c]).to_numpy()
    table = pd.concat([table, added], ignore_index=True) if len(added) else table
    table["available"] = table["available"].fillna(True).astype(bool)
    table["popularity"] = table["popularity"].astype("int64")

    out.mkdir(parents=True, exist_ok=True)
    model = torch.jit.load(str(src / MODEL_FILE))
    if mc.use_content and (len(known) or len(added)):
        cat, text, num = (model.item_categorical.clone(), model.item_text.clone(), model.item_numeric.clone())
        if len(added):
            n = len(added)
            cat = torch.cat([cat, torch.zeros(n, cat.size(1), dtype=torch.long)])
            text = torch.cat([text, torch.zeros(n, text.size(1), dtype=torch.long)])
            num = torch.cat([num, torch.zeros(n, num.size(1))])
        listed = pd.concat([known, new], ignore_index=True)
        at = torch.as_tensor(np.r_[rows, np.arange(len(added)) + len(table) - len(added)] + 1, dtype=torch.long)
        c2, t2, n2 = encode_content(mc, listed)
        cat[at], text[at], num[at] = c2, t2, n2
        model.set_item_content(cat, text, num)
        with torch.no_grad():
            vectors = model.item_matrix().numpy()
        model.save(str(out / MODEL_FILE))
    else:
        shutil.copyfile(src / MODEL_FILE, out / MODEL_FILE)
    if vectors.shape[0] != len(table) + 1:
        raise RuntimeError(f"{len(table)} items but {vectors.shape[0] - 1} vectors")
    np.save(out / VECTORS_FILE, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    table.to_parquet(out / ITEMS_FILE, index=False)
    # The candidate index: new listings added, items whose vector moved re-added (the old entry
    # goes dead), sold ones left in and filtered when served; rebuilt when too much of it is dead.
    (out / INDEX_FILE).unlink(missing_ok=True)
    added_idx = np.arange(len(table) - len(added), len(table)) + 1
    n_base = len(base_vectors)
    moved = np.abs(vectors[1:n_base] - base_vectors[1:]).max(axis=1) > 1e-6
    relisted = ~base_available & table["available"].to_numpy()[: n_base - 1]  # not in the index yet
    moved = np.flatnonzero(moved | relisted) + 1
    index_info = seqrec_index.update(meta.get("index") or {}, src, out, vectors,
                                     table["available"].to_numpy(), added_idx, moved)

    record = {"base_version": meta.get("model_version"), "items_file": source, "snapshot": snapshot,
              "rows": int(len(upd)), "updated": int(len(known)), "added": int(len(added)),
              "skipped_new_items_without_content_model": skipped,
              "newly_unavailable": int((~table["available"]).sum()) - before_unavailable,
              "available_items": int(table["available"].sum()), "index": index_info}
    meta.update({"model_version": version, "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                 "num_items": int(len(table)), "index": index_info, "catalog_update": record})
    write_metadata(out, meta)
    log.info("catalog: %s -> %s version %s: %s", src, out, version, record)
    return record


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.catalog", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, help="existing export directory")
    ap.add_argument("--items", required=True, help="item table (.csv or .parquet)")
    ap.add_argument("--out", required=True, help="new export directory")
    ap.add_argument("--version", required=True, help="model version of the new export")
    ap.add_argument("--snapshot", action="store_true", help="items absent from the table become unavailable")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        record = rebuild(args.export, read_table(args.items), args.out, args.version, args.snapshot, args.items)
    except UserError as e:  # a mistake in what was asked: one line; anything else is a bug
        return cli_error(ap.prog, e)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
