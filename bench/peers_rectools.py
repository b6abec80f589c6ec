"""Peers from the package registry on the project's split: RecTools' SASRecModel and ALS through
`implicit` (the one RecTools wraps). Needs the bench environment (`make bench-peers` builds
.venv-bench from bench/requirements-peers.txt); bench/peers.py drives it.

Both peers score score = query . item row, so their vectors go to the project's evaluator
(bench.peers_data.evaluate_factors). The library's own top-k (SASRecModel.recommend,
AlternatingLeastSquares.recommend) is checked against those ranks on a sample of test users
(`library_topk_check`).
"""
from __future__ import annotations

import copy
import logging
import os
import time
from typing import Any, Dict, List, Tuple

import numpy as np
import pandas as pd
from pytorch_lightning import Callback
from scipy import sparse

from bench.peers_data import EvalCases, PeerSplit, evaluate_factors, topk_metrics
from train.evaluate import summarize

log = logging.getLogger(__name__)


def rectools_dataset(frame: pd.DataFrame):
    """(user_id, item, order) -> a RecTools Dataset; datetime = the project's row order, so the
    library's stable sort by time keeps the project's sequence order."""
    from rectools import Columns
    from rectools.dataset import Dataset
    df = pd.DataFrame({Columns.User: frame["user_id"].to_numpy(), Columns.Item: frame["item"].to_numpy(),
                       Columns.Weight: np.ones(len(frame), dtype=np.float32),
                       Columns.Datetime: pd.to_datetime(frame["order"].to_numpy(), unit="s")})
    return Dataset.construct(df)


# ---------------------------------------------------------------------------------------- SASRec

def sasrec_vectors(module, dataset, users: np.ndarray, n_items: int,
                   batch_size: int = 512) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Session vectors for `users` (their histories in `dataset`, the last session_max_len known
    items, as the library's recommend() encodes them) and the item rows by project item index.
    -> (queries (U, D) in `users` order, rows (N+1, D), known (N+1,) bool, users with no known item).
    Uses the library's own inference path (data preparator + lightning module)."""
    prep = module.data_preparator
    ds = prep.transform_dataset_u2i(dataset, users)
    loader = prep.get_dataloader_recommend(ds, batch_size)
    user_embs, item_embs = module._get_user_item_embeddings(loader, "cpu")  # pylint: disable=protected-access
    d = item_embs.size(1)
    queries = np.zeros((len(users), d), dtype=np.float32)  # a user the model cannot encode: all ties, a miss
    pos = pd.Index(users).get_indexer(ds.user_id_map.get_external_sorted_by_internal())
    queries[pos] = user_embs.numpy()
    ext = prep.item_id_map.get_external_sorted_by_internal()[prep.n_item_extra_tokens:].astype(np.int64)
    rows = np.zeros((n_items + 1, d), dtype=np.float32)
    rows[ext] = item_embs[prep.n_item_extra_tokens:].numpy()
    known = np.zeros(n_items + 1, dtype=bool)
    known[ext] = True
    return queries, rows, known, int(len(users) - len(pos))


# A file whose existence stops training after the current epoch (the best epoch is still the one
# evaluated): for ending a long run on a shared machine without losing it. peers.json records it.
STOP_FILE = os.environ.get("SEQREC_PEERS_STOP_FILE", "")


class ValidationStop(Callback):
    """A Lightning callback: after each epoch, validation NDCG@10 through the project's evaluator;
    keeps the best epoch's weights and stops after `patience` epochs without a better one."""

    def __init__(self, split: PeerSplit, valid_dataset, patience: int):
        super().__init__()
        self.split, self.valid_dataset, self.patience = split, valid_dataset, patience
        self.curve: List[Dict[str, Any]] = []
        self.best, self.best_epoch, self.best_state = -1.0, 0, None
        self.stopped_by_hand = None  # the epoch after which STOP_FILE was found
        self.train_seconds, self.seconds_to_best = 0.0, 0.0
        self._t0 = 0.0

    def __deepcopy__(self, memo):  # RecTools deep-copies the trainer; the split is not copied
        return self

    def on_train_epoch_start(self, trainer, module) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        epoch_s = time.perf_counter() - self._t0
        self.train_seconds += epoch_s
        t = time.perf_counter()
        ev = self.split.valid_eval
        q, rows, known, _ = sasrec_vectors(module, self.valid_dataset, ev.users, self.split.n_items)
        valid = summarize(evaluate_factors(q, rows, ev, known))
        module.train()
        epoch = len(self.curve) + 1
        loss = trainer.callback_metrics.get("train_loss")
        self.curve.append({"epoch": epoch, "loss": None if loss is None else round(float(loss), 5),
                           "valid_NDCG@10": round(valid["NDCG@10"], 5), "valid_HR@10": round(valid["HR@10"], 5),
                           "epoch_seconds": round(epoch_s, 1), "valid_seconds": round(time.perf_counter() - t, 1)})
        log.info("SASRec epoch %d: %.0f s, loss %s, valid NDCG@10 %.4f HR@10 %.4f", epoch, epoch_s,
                 self.curve[-1]["loss"], valid["NDCG@10"], valid["HR@10"])
        if valid["NDCG@10"] > self.best:
            self.best, self.best_epoch, self.seconds_to_best = valid["NDCG@10"], epoch, self.train_seconds
            self.best_state = copy.deepcopy(module.torch_model.state_dict())
        elif epoch - self.best_epoch >= self.patience:
            trainer.should_stop = True
        if STOP_FILE and os.path.exists(STOP_FILE) and not trainer.should_stop:
            self.stopped_by_hand, trainer.should_stop = epoch, True
            log.warning("SASRec: %s exists: stopping after epoch %d (best %d)", STOP_FILE, epoch, self.best_epoch)


def fit_sasrec(split: PeerSplit, hp: Dict[str, Any], patience: int, max_epochs: int, seed: int) -> Dict[str, Any]:
    """Train SASRecModel on the split's training events, early-stopped on validation NDCG@10;
    evaluate the best epoch on every test case (input: train + validation events)."""
    from pytorch_lightning import Trainer, seed_everything
    from rectools.models import SASRecModel

    seed_everything(seed, workers=True)
    train_ds = rectools_dataset(split.train_frame())
    stop = ValidationStop(split, train_ds, patience)

    def trainer() -> Trainer:
        return Trainer(max_epochs=max_epochs, min_epochs=1, accelerator="cpu", devices=1, logger=False,
                       enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                       callbacks=[stop])

    model = SASRecModel(**hp, epochs=max_epochs, get_trainer_func=trainer, recommend_torch_device="cpu")
    t = time.perf_counter()
    model.fit(train_ds)
    fit_wall = time.perf_counter() - t
    model.lightning_model.torch_model.load_state_dict(stop.best_state)

    t = time.perf_counter()
    test_ds = rectools_dataset(split.test_input_frame())
    ev = split.test_eval
    q, rows, known, cold_users = sasrec_vectors(model.lightning_model, test_ds, ev.users, split.n_items)
    per_case = evaluate_factors(q, rows, ev, known)
    predict_wall = time.perf_counter() - t
    return {"per_case": per_case, "fit_wall_seconds": fit_wall, "predict_wall_seconds": predict_wall,
            "train_seconds": stop.train_seconds, "seconds_to_best": stop.seconds_to_best,
            "epochs": len(stop.curve), "best_epoch": stop.best_epoch, "best_valid_NDCG@10": stop.best,
            "validation_curve": stop.curve, "stopped_by_hand_after_epoch": stop.stopped_by_hand,
            "events_per_epoch": sasrec_events_per_epoch(split, hp),
            "test_users_without_known_item": cold_users, "known_items": int(known.sum()),
            "model": model, "test_dataset": test_ds, "test_vectors": (q, rows, known)}


def sasrec_events_per_epoch(split: PeerSplit, hp: Dict[str, Any]) -> int:
    """Target events one epoch trains on: per user with >= train_min_user_interactions training
    events, its last session_max_len + 1 events give session_max_len (or fewer) targets."""
    n = split.prep.split.train.lengths
    n = n[n >= hp.get("train_min_user_interactions", 2)]
    return int((np.minimum(n, hp["session_max_len"] + 1) - 1).sum())


def sasrec_library_topk(fit: Dict[str, Any], split: PeerSplit, users: np.ndarray, k: int) -> List[np.ndarray]:
    """SASRecModel.recommend's own top-k (filter_viewed) for these test users."""
    recs = fit["model"].recommend(users=users, dataset=fit["test_dataset"], k=k, filter_viewed=True)
    by_user = recs.groupby("user_id", sort=False)["item_id"].apply(lambda s: s.to_numpy(np.int64))
    return [by_user.get(u, np.zeros(0, np.int64)) for u in users]


# ------------------------------------------------------------------------------------------ ALS

def user_items(frame: pd.DataFrame, users: np.ndarray, n_items: int) -> sparse.csr_matrix:
    """(len(users), N+1) interaction counts, row i = users[i]'s events in `frame`."""
    rows = pd.Index(users).get_indexer(frame["user_id"].to_numpy())
    keep = rows >= 0
    m = sparse.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], frame["item"].to_numpy()[keep])),
                          shape=(len(users), n_items + 1))
    m.sum_duplicates()
    return m


def fit_als(split: PeerSplit, hp: Dict[str, Any], seed: int, threads: int):
    """implicit's ALS on the training events. -> (model, train users, train matrix, fit seconds)."""
    from implicit.als import AlternatingLeastSquares
    frame = split.train_frame()
    users = np.unique(frame["user_id"].to_numpy())
    ui = user_items(frame, users, split.n_items)
    model = AlternatingLeastSquares(**hp, random_state=seed, num_threads=threads)
    t = time.perf_counter()
    model.fit(ui, show_progress=False)
    return model, ui, time.perf_counter() - t


def als_vectors(model, frame: pd.DataFrame, ev: EvalCases, n_items: int, known: np.ndarray):
    """Queries = the users' factors recomputed from `frame` (their histories as of the case, the
    validation item included for test cases) against the fitted item factors."""
    ui = user_items(frame, ev.users, n_items)
    q = model.recalculate_user(np.arange(len(ev)), ui)
    return np.asarray(q), np.asarray(model.item_factors), ui


def als_known(split: PeerSplit) -> np.ndarray:
    """Items with a training event: the only rows ALS has learned (the others stay at zero)."""
    known = split.prep.popularity > 0
    known[0] = False
    return known


def evaluate_als(model, split: PeerSplit, ev: EvalCases, frame: pd.DataFrame) -> Dict[str, np.ndarray]:
    known = als_known(split)
    q, rows, _ = als_vectors(model, frame, ev, split.n_items, known)
    return evaluate_factors(q, rows, ev, known)


def als_library_topk(model, split: PeerSplit, ev: EvalCases, pick: np.ndarray, k: int) -> List[np.ndarray]:
    """AlternatingLeastSquares.recommend's own top-k (recalculate_user, already-liked items
    filtered, items without a training event filtered) for test cases `pick`."""
    ui = user_items(split.test_input_frame(), ev.users[pick], split.n_items)
    unknown = np.flatnonzero(~als_known(split))
    ids, _ = model.recommend(np.arange(len(pick)), ui, N=k, filter_already_liked_items=True,
                             filter_items=unknown, recalculate_user=True)
    return [np.asarray(r, dtype=np.int64) for r in ids]


def topk_agreement(per_case: Dict[str, np.ndarray], pick: np.ndarray, topk: List[np.ndarray],
                   targets: np.ndarray, n_items: int, k: int = 10) -> Dict[str, Any]:
    """The library's own top-k against the project evaluator's ranks on the same cases. They can
    differ only where the input is longer than the evaluator's history_length: the library filters
    every item of the input, the evaluator the last history_length (as the project's model pads
    them). On ml-latest-small (376 of 610 test inputs longer than 50) ALS's 11 differing cases
    were all such users; with the whole input removed the two agreed on all 610."""
    lib = topk_metrics(topk, targets, n_items, ks=(k,))
    ours_hit = per_case[f"HR@{k}"][pick]
    return {"users": int(len(pick)), f"library_HR@{k}": float(lib[f"HR@{k}"].mean()),
            f"evaluator_HR@{k}": float(ours_hit.mean()),
            f"library_NDCG@{k}": float(lib[f"NDCG@{k}"].mean()),
            f"evaluator_NDCG@{k}": float(per_case[f"NDCG@{k}"][pick].mean()),
            "cases_with_same_hit": float((lib[f"HR@{k}"] == ours_hit).mean()),
            "max_abs_NDCG_difference": float(np.abs(lib[f"NDCG@{k}"] - per_case[f"NDCG@{k}"][pick]).max())}
