"""Event log -> item index -> split -> sequences -> sampled training -> evaluation -> export.

    result = run(TrainConfig(data="synthetic", epochs=5), "artifacts/demo")

With split=loo the first fit is the anchors' protocol (SASRec+, gSASRec): it trains on every
event but each user's last two, early-stops on validation NDCG@10, and its test input is the
history up to the test target, the validation item included (split.leave_one_out's test
history ends where the validation target is), ranked against every item with the history's
own items removed. refit_on_validation adds a second fit on train + validation events.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from handler.seqrec_artifact import ItemIndex
from model import ModelConfig, SequenceModel

from .config import TrainConfig
from .errors import UserError
from .evaluate import evaluate_ranking, model_scorer, popularity_scorer, summarize
from .events import DropReport, load_events, parquet_parts
from .export import export_model
from .negatives import CandidateSampler
from .pretrained import load_item_vectors, svd_item_vectors
from .report import PhaseClock, fit_record, plot_history, run_totals
from .sequences import EventColumns, SeenItems, SequentialDataset, encode_cases, seen_items
from .split import Cases, RowRanges, Split, leave_one_out, temporal_split
from .threads import resolve_threads
from .trainer import History, fit

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    events: pd.DataFrame
    items: Optional[pd.DataFrame]
    drops: DropReport
    index: ItemIndex
    split: Split
    cols: EventColumns
    popularity: np.ndarray  # (N+1,) training events per item index
    cold_events: Optional[pd.DataFrame] = None  # events on items held out (cfg.cold_start_items)
    # Wall seconds of each preparation phase (load, index, split, columns); run() adds "windows".
    seconds: Dict[str, float] = dataclasses.field(default_factory=dict)


def load_data(cfg: TrainConfig):
    """-> (events, items or None, DropReport) in the canonical schema of train.events."""
    from .datasets import LOADERS, load_dataset
    if cfg.data == "synthetic":
        from .synthetic import generate_marketplace
        events, items = generate_marketplace(n_users=cfg.synthetic_users, n_items=cfg.synthetic_items,
                                            seed=cfg.synthetic_seed)
        return events, items, DropReport(rows_read=len(events))
    if cfg.data in LOADERS:
        try:
            return load_dataset(cfg.data)
        except FileNotFoundError as e:  # the bundled data is not where SEQREC_DATA points
            raise UserError(str(e)) from None
    if not Path(cfg.data).exists():
        raise UserError(f"data: {cfg.data!r} is not 'synthetic', a bundled dataset ({', '.join(sorted(LOADERS))}) "
                        f"or an existing event log (.csv or .parquet file, or a directory of .parquet parts)")
    # Training reads no other event column: leaving them on disk keeps a 30M-event log lean.
    events, drops = load_events(cfg.data, extra_columns=False)
    items = None
    if Path(cfg.data).is_dir():  # train.synthetic_scale's layout: DIR/items.parquet beside the parts
        items_file = parquet_parts(cfg.data)[1]
        items = pd.read_parquet(items_file) if items_file is not None else None
    return events, items, drops


def prepare(cfg: TrainConfig) -> Prepared:
    clock = time.perf_counter()
    seconds: Dict[str, float] = {}

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase], clock = now - clock, now

    events, items, drops = load_data(cfg)
    lap("load")
    if events.empty:
        raise UserError(f"no events left in {cfg.data!r} after loading: {drops.to_dict()}")
    cold = None
    if cfg.cold_start_items > 0:
        from .coldstart import hold_out_items
        events, cold = hold_out_items(events, cfg.cold_start_items, cfg.seed)
    index = ItemIndex.from_items(events["item_id"])
    events["item_idx"] = index.encode(events["item_id"]).astype(np.int32)  # in place: no copy of the log
    lap("index")
    if cfg.split == "loo":  # the config allows only these two
        split = leave_one_out(events, cfg.min_events)
    else:
        split = temporal_split(events, cfg.temporal_cut)
    check_evaluable(split, cfg, events)
    popularity = np.bincount(events["item_idx"].to_numpy()[split.train.flat()], minlength=len(index) + 1)
    popularity[0] = 0
    lap("split")
    cols = EventColumns(events)
    lap("columns")
    log.info("prepared %d events in %s s", len(events), {k: round(v, 2) for k, v in seconds.items()})
    return Prepared(events, items, drops, index, split, cols, popularity, cold, seconds)


def check_evaluable(split: Split, cfg: TrainConfig, events: pd.DataFrame) -> None:
    """Fail before training when the split leaves no validation or no test case: the metrics would
    be NaN and early stopping blind."""
    if len(split.valid) and len(split.test):
        return
    users, n = events["user_id"].nunique(), len(events)
    if cfg.split == "loo":
        longest = int(events.groupby("user_id").size().max())
        fix = (f"lower min_events (to {max(longest, 3)} or less)" if longest >= 3
               else "use a log where users have 3 or more events, or split=temporal")
        raise UserError(f"nothing to evaluate: none of the {users} users ({n} events) has the "
                        f"min_events={cfg.min_events} events that split=loo needs for a validation and "
                        f"a test event (the longest history has {longest}); {fix}")
    empty = "validation" if not len(split.valid) else "test"
    raise UserError(f"nothing to evaluate: split=temporal with temporal_cut={cfg.temporal_cut} leaves no "
                    f"{empty} case among {users} users ({n} events): no user has an event before the "
                    f"{empty} period and one in it; change temporal_cut or use split=loo")


def fit_event_vocabularies(mc: ModelConfig, prep: Prepared, data: str) -> None:
    """Event-type and source vocabularies and strength bucket edges, unless the config gives them.
    A switched-on feature whose column the data lacks is an error, not a feature that is always
    "unknown"."""
    for on, column in ((mc.use_event_type, "event_type"), (mc.use_source, "source"),
                       (mc.use_strength, "strength")):
        if on and column not in prep.events:
            raise UserError(f"model.use_{column}: {data!r} has no {column!r} "
                             f"column (events have {list(prep.events.columns)})")
    if mc.use_event_type and not mc.event_types:
        mc.event_types = distinct_labels(prep.events["event_type"])
    if mc.use_source and not mc.sources:
        mc.sources = distinct_labels(prep.events["source"])
    if mc.use_strength and not mc.strength_edges:
        mc.strength_edges = strength_edges(prep.cols.strengths[prep.split.train.flat()], mc.strength_buckets)


def distinct_labels(column: pd.Series) -> List[str]:
    """The sorted distinct labels, without a string per event. A missing label is no vocabulary
    entry: encode_events maps it to "unknown"."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return sorted(str(c) for c in column.cat.remove_unused_categories().cat.categories)
    return sorted(column.dropna().astype(str).unique().tolist())


def strength_edges(values: np.ndarray, max_buckets: int) -> List[float]:
    """Bucket edges for strengths: one bucket per distinct value when there are at most max_buckets
    (ratings), else quantile buckets. NaN values (unknown) are ignored."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        raise UserError("model.use_strength: no training event has a numeric strength")
    distinct = np.unique(v)
    if len(distinct) <= max_buckets:
        return distinct[1:].tolist()
    return np.unique(np.quantile(v, np.arange(1, max_buckets) / max_buckets)).tolist()


def build_model(cfg: TrainConfig, prep: Prepared, rows=None) -> SequenceModel:
    """`rows`: the event rows the model will train on (default: the training split); pretrained=svd
    factorises their co-occurrence, so a refit's start sees its validation events too."""
    mc = cfg.model
    mc.num_items = len(prep.index)
    fit_event_vocabularies(mc, prep, cfg.data)
    vectors = None
    if cfg.pretrained == "svd":
        seqs = [prep.cols.items[r] for r in (prep.split.train if rows is None else rows)]
        vectors = svd_item_vectors(seqs, mc.num_items, mc.embedding_dim, cfg.svd_window, cfg.seed)
    elif cfg.pretrained != "none":
        vectors = load_item_vectors(cfg.pretrained, prep.index, mc.embedding_dim)
    content = None
    if mc.use_content:
        from .content import fit_content_spec, index_content
        if prep.items is None:
            raise UserError(f"model.use_content: {cfg.data!r} has no item table with content")
        fit_content_spec(mc, prep.items)
        content = index_content(mc, prep.items, prep.index.ids)
    return SequenceModel(mc, vectors, content)


def forget_untrained(model: SequenceModel, popularity: np.ndarray) -> int:
    """Zero the id rows of items without a training event (popularity 0) and return how many.

    Such a row is still its random initial vector (or one only pushed away from tastes as a
    negative): as the last item of a history it is noise the LSTM reads at full strength. Under
    the anchors' protocol that is the test input of every user whose validation item has no
    training event (7 % on Beauty). bench/results/unknown_input.json, on validation: such an item
    appended to each history takes NDCG@10 from 0.0378 to 0.0222; zeroed, 0.0334. As a candidate a
    zero row scores cosine 0, below any top-k an evaluation or a request reads. With item content
    the item keeps its content vector, as a new listing does. Evaluation and export see the same rows."""
    rows = torch.from_numpy(np.flatnonzero(popularity == 0)).long()
    rows = rows[rows > 0]
    with torch.no_grad():
        model.item_embedding.weight[rows] = 0.0
    return len(rows)


def _evaluate(model: SequenceModel, prep: Prepared, cases: Cases, cfg: TrainConfig, ci: bool) -> Dict[str, Any]:
    items, feats, lengths = encode_cases(model, prep.cols, cases)
    targets, seen = torch.as_tensor(cases.targets), seen_items(prep.cols, cases)
    model.eval()
    with torch.no_grad():
        m = evaluate_ranking(model_scorer(model), items, feats, lengths, targets, cfg.exclude_seen, seen=seen)
    p = evaluate_ranking(popularity_scorer(prep.popularity), items, feats, lengths, targets, cfg.exclude_seen,
                         seen=seen)
    out = {"model": summarize(m, ci=ci, seed=cfg.seed), "popularity": summarize(p, ci=ci, seed=cfg.seed)}
    if cfg.split == "loo" and cfg.exclude_seen:
        # A second filter beside the anchors' (the whole history removed, as antklen's SeqRecBase
        # filters full_history): only the training part removed, so the validation item, the
        # history's last event, stays rankable and costs a slot where the model puts it in its top
        # 10. How far the ranking leans on showing the last item again (model.residual adds its
        # vector to the taste): what a client that sends exclude_seen=false would see.
        h = cases.histories
        train_part = SeenItems(prep.cols.items, RowRanges(h.starts, np.maximum(h.starts, h.stops - 1)))
        with torch.no_grad():
            t = evaluate_ranking(model_scorer(model), items, feats, lengths, targets, True, seen=train_part)
        out["model_train_part_removed"] = summarize(t, ci=ci, seed=cfg.seed)
    return out


def sample_test_cases(cases: Cases, cfg: TrainConfig) -> Tuple[Cases, Dict[str, Any]]:
    """The test cases evaluated: all, or a seeded uniform sample of cfg.max_test_users of them
    (one case per user), and the record of it that summary.json and metadata.json carry."""
    sample = cases.subset(cfg.max_test_users, cfg.seed)
    sampled = len(sample) < len(cases)
    if sampled:
        log.info("test: a random sample of %d of the %d test users (max_test_users, seed %d)",
                 len(sample), len(cases), cfg.seed)
    return sample, {"users": len(sample), "of": len(cases), "max_test_users": cfg.max_test_users,
                    "sampled": sampled, "seed": cfg.seed if sampled else None}


def _refit(cfg: TrainConfig, prep: Prepared, first: History, work: Path, resume: bool):
    """A fresh model trained for the validated epoch count on train + validation events (never
    the test ones). Popularity is recounted on the same events, for the baseline and the export.
    Needs split=loo (TrainConfig checks it); each epoch at the first fit's learning rate."""
    epochs = first.best_epoch
    rows = prep.split.train_with_valid
    prep.popularity = np.bincount(prep.cols.items[rows.flat()], minlength=len(prep.index) + 1)
    prep.popularity[0] = 0
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, prep, rows)
    data = SequentialDataset(model, prep.cols, rows)
    sampler = CandidateSampler.from_config(cfg, len(prep.index), torch.as_tensor(prep.popularity))
    checkpoint = work / "refit_checkpoint.pt"
    if not resume and checkpoint.exists():
        checkpoint.unlink()
    log.info("refitting on train + validation events for %d epochs", epochs)
    schedule = [row.get("lr", cfg.lr) for row in first.epochs[:max(1, epochs)]]
    hist = fit(model, data, dataclasses.replace(cfg, epochs=max(1, epochs)), sampler, None, checkpoint, schedule)
    return model, hist, data


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def init_distributed() -> None:
    """Under torchrun (WORLD_SIZE > 1) join the process group. gloo, also where there is a GPU:
    training runs on the CPU, and NCCL has no all-reduce for the sparse item-table gradient."""
    if under_torchrun() and not dist.is_initialized():
        dist.init_process_group("gloo")


def under_torchrun() -> bool:
    """This process is one rank of several (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def exit_rank(code: int) -> None:
    """End a DDP rank whose work is done and written: flush, then exit without the interpreter's
    teardown. gloo's worker threads can outlive destroy_process_group; one that drops the last
    reference to a tensor while the interpreter finalises needs the GIL, finalisation ends that
    thread instead, and the C++ runtime aborts the process ("terminate called without an active
    exception", SIGABRT; about one run in four on 2 busy cores), so torchrun reported a failed run
    after every file had been written."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(cfg: TrainConfig, out_dir, resume: bool = True) -> Dict[str, Any]:
    """Train, evaluate on the test cases next to popularity, export. Returns the summary."""
    if cfg.model.item_bias:  # found before training, not at the export an hour later
        raise UserError("model.item_bias is for bench.search only: serving ranks by cosine alone")
    t_start = time.perf_counter()
    clock = PhaseClock()  # summary.json's phase_seconds
    init_distributed()
    torch.set_num_threads(resolve_threads(cfg.num_threads))  # never more than this process's share
    torch.manual_seed(cfg.seed)
    prep = prepare(cfg)  # data mistakes are found before anything is written
    clock.lap("prepare")
    out = Path(out_dir)
    work = out / "train"
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg, prep)
    data = SequentialDataset(model, prep.cols, prep.split.train)
    prep.seconds["windows"] = data.build_seconds
    sampler = CandidateSampler.from_config(cfg, len(prep.index), torch.as_tensor(prep.popularity))
    valid_cases = prep.split.valid.subset(cfg.max_eval_users, cfg.seed)
    valid_inputs = encode_cases(model, prep.cols, valid_cases)
    valid_targets, valid_seen = torch.as_tensor(valid_cases.targets), seen_items(prep.cols, valid_cases)
    clock.lap("windows")

    def validate(m: SequenceModel) -> Dict[str, float]:
        with torch.no_grad():
            per = evaluate_ranking(model_scorer(m), *valid_inputs, valid_targets, cfg.exclude_seen, seen=valid_seen)
        return summarize(per)

    checkpoint = work / "checkpoint.pt"
    if not resume and checkpoint.exists() and _is_main():
        checkpoint.unlink()
    t_fit = time.perf_counter()
    hist = fit(model, data, cfg, sampler, validate, checkpoint)
    fit_wall = time.perf_counter() - t_fit
    clock.lap("train")  # the epochs (train_seconds), validations and checkpoints
    if not _is_main():  # under torchrun, rank 0 alone evaluates and exports
        return {}
    untrained = forget_untrained(model, prep.popularity)
    test_cases, test_sample = sample_test_cases(prep.split.test, cfg)
    fits = [fit_record("early_stopped", "train", hist, len(data), data.num_events, fit_wall,
                       _evaluate(model, prep, test_cases, cfg, ci=True))]
    clock.lap("evaluate")
    validated = hist
    if cfg.refit_on_validation:
        t_fit = time.perf_counter()
        model, hist, refit_data = _refit(cfg, prep, hist, work, resume)
        untrained = forget_untrained(model, prep.popularity)  # the refit's own training events
        fit_wall = time.perf_counter() - t_fit
        clock.lap("refit")
        fits.append(fit_record("refit", "train+validation", hist, len(refit_data), refit_data.num_events,
                               fit_wall, _evaluate(model, prep, test_cases, cfg, ci=True)))
        clock.lap("evaluate")
    test = fits[-1]["test"]  # the exported model's

    cold_start = None
    if prep.cold_events is not None:
        from .coldstart import evaluate_cold_start
        cold_start = evaluate_cold_start(model, cfg.model, prep.index, prep.events, prep.cold_events,
                                         prep.items, prep.popularity, cfg.exclude_seen, cfg.seed)
        clock.lap("cold_start")
    summary = {
        "data": {"name": cfg.data, "events": len(prep.events), "users": int(prep.events["user_id"].nunique()),
                 "items": len(prep.index), "training_windows": len(data), "training_events": data.num_events,
                 "dropped": prep.drops.to_dict(), "split": prep.split.counts,
                 "valid_cases": len(valid_cases), "test_cases": len(prep.split.test), "test_sample": test_sample,
                 "items_without_training_event": untrained},  # of the exported fit; zero rows (forget_untrained)
        "config": cfg.to_dict(),
        "fits": fits,  # every fit: epochs, best epoch, seconds to it, validation curve, test metrics
        "exported": fits[-1]["name"],
        # The whole run: epochs, training seconds and throughput over every fit; wall_seconds from
        # the start of run() to the end of the export.
        **run_totals(fits), "wall_seconds": time.perf_counter() - t_start,
        # The fit that validated (the first): its best epoch and curve (bench/ab.py reads these).
        "best_epoch": validated.best_epoch, "history": validated.epochs,
        "phase_seconds": clock.seconds,
        "prepare_seconds": prep.seconds,  # prepare's own phases: load, index, split, columns
        "test": test,
        "cold_start": cold_start,
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
    }
    plot_history(validated.epochs, work / "training.png", title=f"seqrec on {cfg.data}")
    meta = {"model_config": cfg.model.to_dict(), "train_config": cfg.to_dict(),
            "data_summary": summary["data"], "metrics": test}
    if cfg.version:
        meta["model_version"] = cfg.version
    export_model(model, prep.index, prep.popularity[1:], out, items=prep.items, metadata=meta, index_spec=cfg.index)
    clock.lap("export")
    summary["wall_seconds"] = time.perf_counter() - t_start
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
