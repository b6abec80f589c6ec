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
                seed: int = 0, index_spec: str = "auto", clusters: int = 0, **model_config) -> Path:
    """An untrained model with a real export layout: ids 1000, 1003, ... (str ids: "1000",
    "sku-1003", ...), every 7th item unavailable, popularity falling with the index. `clusters`:
    item vectors drawn around that many centres (trained vectors are clustered; the model's own
    untrained ones are not), `index_spec`: the candidate index (train.export)."""
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
    mc = ModelConfig(num_items=len(idx), total_length=TOTAL_LENGTH, **model_config)
    model = SequenceModel(mc)
    vectors = clustered_vectors(num_items, mc.embedding_dim, clusters, seed) if clusters else None
    export_model(model, idx, popularity, out_dir, items=items, metadata={"model_version": version},
                 item_vectors=vectors, index_spec=index_spec)
    return out_dir


def clustered_vectors(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """(n + 1, dim) float32 unit rows around `clusters` random centres; row 0 (padding) zero."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.vstack([np.zeros((1, dim)), x]).astype(np.float32)

