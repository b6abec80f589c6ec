"""Small export directories for handler tests; the in-process TorchServe harness is
devtools/inprocess.py (re-exported here for the test files).
"""
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from devtools.inprocess import load_handler, make_context, run_batch  # noqa: F401 (re-exported)

NUM_ITEMS = 300
TOTAL_LENGTH = 20


def make_export(out_dir: Path, num_items: int = NUM_ITEMS, str_ids: bool = False, version: str = "1.0",
                seed: int = 0, **model_config) -> Path:
    """An untrained model with a real export layout: ids 1000, 1003, ... (str ids: "1000",
    "sku-1003", ...), every 7th item unavailable, popularity falling with the index."""
    from handler.seqrec_artifact import ItemIndex
    from model import ModelConfig, SequenceModel
    from train.export import export_model

    torch.manual_seed(seed)
    raw = [1000 + 3 * i for i in range(num_items)]
    if str_ids:  # numeric-looking strings (so a client's 1003 must match "1003") and others
        raw = [str(x) if i % 2 == 0 else f"sku-{x}" for i, x in enumerate(raw)]
    idx = ItemIndex.from_items(pd.Series(raw))
    items = pd.DataFrame({"item_id": idx.ids.to_numpy(),
                          "available": [(j % 7) != 3 for j in range(num_items)]})
    popularity = np.arange(num_items, 0, -1) * 10
    model = SequenceModel(ModelConfig(num_items=len(idx), total_length=TOTAL_LENGTH, **model_config))
    export_model(model, idx, popularity, out_dir, items=items, metadata={"model_version": version})
    return out_dir
