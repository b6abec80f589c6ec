"""Write the export directory (see docs/export-format.md) that archive.sh packs for serving.

    export_model(model, index, popularity, out_dir, items=items_df, metadata={...}, index_spec="hnsw:M=32")

File names, metadata.json (format_version, sha256) and the id map are handler.seqrec_artifact's,
the module the handler and archive.sh read the export with.
"""
from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pandas as pd
import torch

from handler.seqrec_artifact import INDEX_FILE, ITEMS_FILE, MODEL_FILE, VECTORS_FILE, ItemIndex, write_metadata
from handler.seqrec_index import IndexSpec, build
from model import SequenceModel

log = logging.getLogger(__name__)


def candidate_table(index: ItemIndex, popularity: np.ndarray, items: Optional[pd.DataFrame]) -> pd.DataFrame:
    """One row per item index 1..N: item_id, popularity, available, then item metadata."""
    table = pd.DataFrame({"item_id": index.ids.to_numpy(), "popularity": np.asarray(popularity, dtype=np.int64)})
    if items is not None and len(items):
        meta = items.drop_duplicates("item_id").set_index("item_id")
        meta = meta.reindex(index.ids)
        for col in meta.columns:
            if col not in ("popularity",):
                table[col] = meta[col].to_numpy()
    if "available" not in table:
        table["available"] = True
    table["available"] = table["available"].fillna(True).astype(bool)
    return table


def export_model(model: SequenceModel, index: ItemIndex, popularity: np.ndarray, out_dir,
                 items: Optional[pd.DataFrame] = None, metadata: Optional[Dict[str, Any]] = None,
                 item_vectors: Optional[np.ndarray] = None, index_spec: str = "auto") -> Path:
    """Script the model, write the item vectors, the item table and the candidate index
    (`index_spec`, handler.seqrec_index.IndexSpec: hnsw/ivf with knobs, none, or auto = hnsw from
    100k available items), then metadata.json (format_version, sha256 of every file), last and
    atomically."""
    if model.use_item_bias:
        raise ValueError("model.item_bias is a training-side experiment: the handler and the candidate "
                         "index rank by cosine alone, so an export would serve another ranking than evaluated")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    scripted = torch.jit.script(model)
    scripted.save(str(out / MODEL_FILE))

    if item_vectors is None:
        with torch.no_grad():
            item_vectors = model.item_matrix().numpy()
    item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    if item_vectors.shape[0] != len(index) + 1:
        raise ValueError(f"item_vectors has {item_vectors.shape[0]} rows, expected {len(index) + 1}")
    np.save(out / VECTORS_FILE, item_vectors, allow_pickle=False)
    table = candidate_table(index, popularity, items)
    table.to_parquet(out / ITEMS_FILE, index=False)
    (out / INDEX_FILE).unlink(missing_ok=True)  # an old export's index must not be listed as this one's
    index_info = build(IndexSpec.parse(index_spec), item_vectors, table["available"].to_numpy(), out / INDEX_FILE)

    meta = {
        "model_name": "seqrec",
        "model_version": _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d%H%M%S"),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "item_id_type": index.id_type,
        "num_items": len(index),
        "total_length": int(model.total_length),
        "torch_version": torch.__version__,
        "index": index_info,
    }
    meta.update(metadata or {})
    meta = write_metadata(out, meta)
    log.info("exported %d items to %s (version %s)", len(index), out, meta["model_version"])
    return out
