"""The handler in this process, called exactly as a TorchServe worker calls it (tests, benchmarks).

    h, ctx = load_handler("artifacts/demo")             # initialize() with TorchServe's own Context
    answers = run_batch(h, ctx, [{"history": [100001], "k": 5}])

TorchServe's `Context`, `RequestProcessor` and metrics cache are the real classes, so per-request
statuses, content types and metrics behave as they do behind the frontend.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Tuple

import ts
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

# The metrics YAML a worker gets, config.properties naming none: TorchServe's own default. The
# handler declares its metrics itself.
TS_METRICS_YAML = Path(ts.__file__).resolve().parent / "configs" / "metrics.yaml"


def make_context(model_dir: Path, yaml_config: Optional[dict] = None, batch_size: int = 8) -> Context:
    metrics = MetricsCacheYamlImpl(str(TS_METRICS_YAML))
    metrics.initialize_cache()
    metrics.model_name = "seqrec"
    return Context("seqrec", str(model_dir), {"model": {"modelName": "seqrec"}}, batch_size, None, "0.12.0",
                   metrics=metrics, model_yaml_config=yaml_config or {})


def run_batch(handler, ctx: Context, bodies: List[Any]) -> list:
    """What TorchServe's service.predict does around handle(): per-request processors and ids."""
    ctx.request_processor = [RequestProcessor({}) for _ in bodies]
    ctx.request_ids = {i: f"req-{i}" for i in range(len(bodies))}
    if ctx.metrics is not None:
        ctx.metrics.request_ids = ctx.request_ids
    return handler.handle([{"body": b} for b in bodies], ctx)


def load_handler(model_dir: Path, threads: int = 1, yaml_config: Optional[dict] = None) -> Tuple[Any, Context]:
    """initialize() as TorchServe calls it, with `threads` torch threads (SEQREC_THREADS) and the
    archive's model YAML (`yaml_config`, e.g. {"seqrec": {"scoring": "exact"}})."""
    from handler.seqrec_handler import SeqrecHandler

    before = os.environ.get("SEQREC_THREADS")
    os.environ["SEQREC_THREADS"] = str(threads)
    try:
        h = SeqrecHandler()
        ctx = make_context(model_dir, yaml_config)
        h.initialize(ctx)
    finally:
        if before is None:
            del os.environ["SEQREC_THREADS"]
        else:
            os.environ["SEQREC_THREADS"] = before
    return h, ctx
