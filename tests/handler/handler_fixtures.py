"""Helpers for handler tests: small export directories and TorchServe's own Context objects.

A uniquely named module (not conftest) so test files can import it whatever other conftest.py
the session has loaded. The handler's helpers are imported flat (`import seqrec_contract`), exactly
as TorchServe imports them from model_dir, so handler/ goes on sys.path here.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[2]
HANDLER_DIR = ROOT / "handler"
for p in (str(ROOT), str(HANDLER_DIR)):
    if p not in sys.path:
        sys.path.insert(0, p)

from ts.context import Context, RequestProcessor  # noqa: E402
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl  # noqa: E402

NUM_ITEMS = 300
TOTAL_LENGTH = 20


def make_export(out_dir: Path, num_items: int = NUM_ITEMS, str_ids: bool = False, version: str = "1.0",
                seed: int = 0, **model_config) -> Path:
    """An untrained model with a real export layout: ids 1000, 1003, ... (str ids: "1000",
    "sku-1003", ...), every 7th item unavailable, popularity falling with the index."""
    from model import ModelConfig, SequenceModel
    from train.export import export_model
    from train.item_index import ItemIndex

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


def make_context(model_dir: Path, yaml_config=None) -> Context:
    metrics = MetricsCacheYamlImpl(str(HANDLER_DIR / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = "seqrec"
    ctx = Context("seqrec", str(model_dir), {"model": {"modelName": "seqrec"}}, 8, None, "0.12.0",
                  metrics=metrics, model_yaml_config=yaml_config or {})
    return ctx


def run_batch(handler, ctx: Context, bodies):
    """What TorchServe's service.predict does around handle(): per-request processors and ids."""
    ctx.request_processor = [RequestProcessor({}) for _ in bodies]
    ctx.request_ids = {i: f"req-{i}" for i in range(len(bodies))}
    if ctx.metrics is not None:
        ctx.metrics.request_ids = ctx.request_ids
    data = [{"body": b} for b in bodies]
    return handler.handle(data, ctx)


def load_handler(model_dir: Path):
    """initialize() as TorchServe calls it, with one torch thread (conftest restores the count)."""
    from seqrec_handler import SeqrecHandler

    os.environ["SEQREC_THREADS"] = "1"
    try:
        h = SeqrecHandler()
        ctx = make_context(model_dir)
        h.initialize(ctx)
    finally:
        del os.environ["SEQREC_THREADS"]
    return h, ctx
