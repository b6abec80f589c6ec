"""The training loop: sampled (or full) softmax, periodic full-ranking validation, early stopping
on NDCG@10, a checkpoint after every epoch, resume, fixed seed. Epochs and patience decide when it
stops, so the same seed and data give the same epochs (max_train_seconds, off by default, is the
one wall-clock rule). DDP-ready: under torchrun the loss module is wrapped in
DistributedDataParallel and each rank takes its share of the batches (gloo: the sparse item-table
gradient is all-reduced as a sparse tensor).
"""
from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from model import SequenceModel

from .config import TrainConfig, config_diff
from .errors import UserError
from .loss import SampledSoftmaxLoss
from .negatives import CandidateSampler
from .optim import TrainOptimizer
from .progress import EpochProgress
from .sequences import SequentialDataset

log = logging.getLogger(__name__)

# Config keys a resumed run may change: how long to go on and how to run, none of what the epochs
# so far were trained on or validated with (a longer run resumes with more epochs, the kill test
# reruns the same command, a version is only a label).
RESUMABLE_CHANGES = ("epochs", "patience", "max_train_seconds", "num_threads", "progress_seconds", "version")


@dataclass
class History:
    epochs: List[Dict[str, float]] = field(default_factory=list)
    best_ndcg: float = -1.0
    best_epoch: int = -1
    bad_evals: int = 0
    lr: float = 0.0  # the learning rate now, after any reduce-on-plateau decay (0: cfg.lr, not started)
    train_seconds: float = 0.0
    sequences_seen: int = 0
    events_seen: int = 0


def _rank_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def fit(model: SequenceModel, data: SequentialDataset, cfg: TrainConfig, sampler: CandidateSampler,
        validate: Optional[Callable[[SequenceModel], Dict[str, float]]], checkpoint: Optional[Path] = None,
        lr_schedule: Optional[List[float]] = None) -> History:
    """Train in place; leaves the best-validated weights in `model` (with validate=None: the
    weights after the last epoch). Resumes from `checkpoint` when it exists (same seed and data
    give the same result as an uninterrupted run). `lr_schedule`: each epoch's learning rate, given
    (a refit replays its first fit's reduce-on-plateau decays, having no validation of its own)."""
    rank, world = _rank_world()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    loss_module = SampledSoftmaxLoss(model)
    opt = TrainOptimizer(model, cfg)  # before DDP: it makes the item gradient sparse
    # No buffer broadcast: the buffers (item content ids) are built identically on every rank and
    # never change, and syncing them at each forward would cost O(items) a step.
    step_module = (torch.nn.parallel.DistributedDataParallel(loss_module, forward_sync_buffers=False)
                   if world > 1 else loss_module)
    hist, start_epoch = History(), 0
    best_state = copy.deepcopy(model.state_dict())

    if checkpoint is not None and checkpoint.exists():
        ck = torch.load(checkpoint, weights_only=True)
        check_resumable(checkpoint, ck, cfg)
        model.load_state_dict(ck["model"]); opt.load_state_dict(ck["optimizer"])
        best_state = ck["best_model"]; gen.set_state(ck["generator"]); torch.set_rng_state(ck["torch_rng"])
        hist = History(**ck["history"]); start_epoch = ck["epoch"] + 1
        log.info("resumed from %s at epoch %d", checkpoint, start_epoch)
    hist.lr = hist.lr or cfg.lr
    opt.set_lr(hist.lr)

    logq = cfg.negatives == "popularity" and cfg.logq
    n = len(data)
    for epoch in range(start_epoch, cfg.epochs):
        if lr_schedule:
            hist.lr = lr_schedule[min(epoch, len(lr_schedule) - 1)]
            opt.set_lr(hist.lr)
        model.train()
        t0 = time.perf_counter()
        batches = _length_bucketed_batches(data.lengths, cfg.batch_size, gen)
        batches = batches[:len(batches) - len(batches) % world][rank::world]  # equal steps per rank
        progress = EpochProgress(epoch + 1, cfg.epochs, len(batches), cfg.progress_seconds,
                                 enabled=rank == 0, world=world)
        for b in batches:
            lengths = data.lengths[b]
            t = int(lengths.max())  # padding is at the end: columns past the longest are all padding
            items, feats, targets = data.items[b, :t], data.features[b, :t], data.targets[b, :t]
            cands, pos = sampler.sample(targets, gen)
            loss = step_module(items, feats, targets, cands, pos, sampler.log_q_of(cands, targets) if logq else None)
            opt.zero_grad()
            loss.backward()
            opt.step()
            progress.update(len(b), int(lengths.sum()), float(loss.detach()))
        opt.end_epoch()
        progress.close()
        seconds = time.perf_counter() - t0
        total, seqs, events = _all_ranks(progress.loss_sum, progress.sequences, progress.events, world)
        hist.train_seconds += seconds; hist.sequences_seen += seqs; hist.events_seen += events
        row = {"epoch": epoch + 1, "loss": total / max(seqs, 1), "seconds": seconds,
               "sequences_per_s": seqs / seconds, "events_per_s": events / seconds,
               "temperature": float(model.temperature().detach()),  # |w|: how sharp the softmax has become
               "lr": hist.lr}
        stop = False
        if validate is None:
            best_state, hist.best_epoch = copy.deepcopy(model.state_dict()), epoch + 1
        elif (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            model.eval()
            t_valid = time.perf_counter()
            metrics = validate(model) if rank == 0 else {}
            row.update({f"valid_{k}": v for k, v in metrics.items() if isinstance(v, float)})
            row["validation_seconds"] = time.perf_counter() - t_valid  # for the wall time to the best epoch
            ndcg = metrics.get("NDCG@10", -1.0)
            if ndcg > hist.best_ndcg:
                hist.best_ndcg, hist.best_epoch, hist.bad_evals = ndcg, epoch + 1, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                hist.bad_evals += 1
                stop = hist.bad_evals >= cfg.patience
                hist.lr *= cfg.lr_decay  # reduce on plateau (end_epoch has flushed CatchUpAdam's moves)
        hist.epochs.append(row)
        log.info("epoch %d: %s", epoch + 1, {k: float(f"{v:.4g}") for k, v in row.items()})
        if cfg.max_train_seconds and hist.train_seconds >= cfg.max_train_seconds:
            log.info("time budget of %.0f s reached", cfg.max_train_seconds)
            stop = True
        if world > 1:  # every rank must take the same early-stopping and learning-rate decisions
            flag = [stop, hist.lr]
            dist.broadcast_object_list(flag, src=0)
            stop, hist.lr = flag
        opt.set_lr(hist.lr)
        if checkpoint is not None and rank == 0:
            _save(checkpoint, model, opt, best_state, gen, hist, epoch, cfg)
        if stop:
            break
    opt.release()
    model.load_state_dict(best_state)
    model.eval()
    return hist


def _all_ranks(loss_sum: float, seqs: int, events: int, world: int):
    """An epoch's loss sum, sequences and events over every DDP rank, so throughput counts them all."""
    if world == 1:
        return loss_sum, seqs, events
    t = torch.tensor([loss_sum, float(seqs), float(events)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0]), int(t[1]), int(t[2])


def _length_bucketed_batches(lengths, batch_size: int, gen: torch.Generator, pool: int = 50):
    """Random batches of similar lengths: shuffle, sort within pools of `pool` batches, shuffle the
    batches. Most histories are far shorter than total_length, so this saves most LSTM steps."""
    order = torch.randperm(len(lengths), generator=gen)
    batches = []
    for s in range(0, len(order), batch_size * pool):
        chunk = order[s:s + batch_size * pool]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def check_resumable(path: Path, ck: Dict, cfg: TrainConfig) -> None:
    """The checkpoint's config must be this run's, but for RESUMABLE_CHANGES. Both are resolved
    configs (the model's num_items, vocabularies and edges filled in from the data, before fit), so
    an unchanged rerun on the same data always matches."""
    if "config" not in ck:
        raise UserError(f"{path} was written without its config (by an older version), so it cannot be "
                        f"checked against this run; rerun with --fresh to start over")
    now = cfg.to_dict()
    differ = [k for k in config_diff(ck["config"], now) if k not in RESUMABLE_CHANGES]
    if differ:
        shown = "; ".join(f"{k}: {_shown(ck['config'], k)} in the checkpoint, {_shown(now, k)} now"
                          for k in differ[:5])
        more = f" (and {len(differ) - 5} more)" if len(differ) > 5 else ""
        raise UserError(f"{path} was trained with a different config: {shown}{more}; rerun with the "
                        f"checkpoint's values, or with --fresh to start over")


def _shown(config: Dict, dotted_key: str) -> str:
    """The value at a dotted key, short enough for one line (vocabularies can be long)."""
    value = config
    for part in dotted_key.split("."):
        if not isinstance(value, dict) or part not in value:
            return "absent"
        value = value[part]
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _save(path: Path, model, opt, best_state, gen, hist: History, epoch: int, cfg: TrainConfig) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "best_model": best_state,
                "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                "history": hist.__dict__, "epoch": epoch, "config": cfg.to_dict()}, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-save leaves the previous checkpoint intact
