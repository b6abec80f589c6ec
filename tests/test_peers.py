"""bench/peers_data.py: the split handed to a peer library is the project's own, and a peer's
vectors or top-k lists ranked through the adapter give the project evaluator's figures.

Runs in the normal suite without any peer library (a tiny event log, no training). The last test
needs RecTools (the bench environment: `make bench-peers` builds .venv-bench) and skips without it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bench.peers_data import evaluate_factors, peer_split, ranks_from_topk, topk_metrics
from train.evaluate import metrics_from_ranks, target_ranks

N_ITEMS = 30


@pytest.fixture
def tiny(tmp_path):
    """40 users, 3..12 events each over 30 items, with a repeated item and a 2-event user."""
    rng = np.random.default_rng(3)
    rows = []
    for u in range(40):
        n = 2 if u == 0 else int(rng.integers(3, 13))
        items = rng.choice(np.arange(1, N_ITEMS + 1), n, replace=True)
        rows += [(u, int(i), float(t)) for t, i in enumerate(items)]
    path = tmp_path / "events.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)
    return peer_split(str(path), max_eval_users=0, history_length=8)


def test_frames_are_the_projects_split(tiny):
    ev = tiny.prep.events
    per_user = ev.groupby("user_id").size()
    train, test_input = tiny.train_frame(), tiny.test_input_frame()
    # Evaluated users lose their last two events for training and their last one for the test
    # input; the 2-event user trains on both and is never evaluated.
    expected_train = np.where(per_user >= 3, per_user - 2, per_user)
    assert train.groupby("user_id").size().reindex(per_user.index).tolist() == expected_train.tolist()
    assert (test_input.groupby("user_id").size() == np.where(per_user >= 3, per_user - 1, per_user)).all()
    assert 0 not in set(tiny.test_eval.users)
    # Same events, same order: item and row of the project's sorted event table.
    assert (train["item"].to_numpy() == tiny.prep.cols.items[train["order"].to_numpy()]).all()
    assert (np.diff(train["order"].to_numpy()) > 0).all()
    # A test case's target is the user's last event, its history ends with the validation target.
    last = ev.groupby("user_id")["item_idx"].last()
    assert (tiny.test_eval.cases.targets == last.loc[tiny.test_eval.users].to_numpy()).all()
    valid_by_user = dict(zip(tiny.valid_eval.users, tiny.valid_eval.cases.targets))
    inputs = test_input.groupby("user_id")["item"].apply(list)
    for u, items, length in zip(tiny.test_eval.users, tiny.test_eval.items.tolist(), tiny.test_eval.lengths.tolist()):
        history = inputs[u][-8:]  # the evaluator's history: the input's last history_length items
        assert length == len(history) and items[:length] == history and items[length - 1] == valid_by_user[u]
        assert items[length:] == [0] * (8 - length)  # padded after the events, as SequenceModel.pad does


def reference_ranks(scores: np.ndarray, targets: np.ndarray, histories: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The definition, written out: rank = scorable items not in the history (nor padding) that
    score at least as high as the target; a target in the history or unscorable is never a hit."""
    n = scores.shape[1] - 1
    out = []
    for s, t, h in zip(scores, targets, histories):
        if t in h or not known[t]:
            out.append(n)
            continue
        allowed = known.copy()
        allowed[0] = False
        allowed[h] = False
        allowed[t] = False
        out.append(int((s[allowed] >= s[t]).sum()))
    return np.array(out)


def test_evaluate_factors_is_the_project_evaluator(tiny):
    ev = tiny.test_eval
    rng = np.random.default_rng(0)
    q = rng.normal(size=(len(ev), 4)).astype(np.float32)
    rows = rng.normal(size=(N_ITEMS + 1, 4)).astype(np.float32)
    rows[7] = rows[3]  # a tie: counts against the target
    per = evaluate_factors(q, rows, ev)
    scores = torch.as_tensor(q) @ torch.as_tensor(rows).T
    whole = ev.seen.batch(slice(None))  # every history item is removed, not only the last 50
    expected = metrics_from_ranks(target_ranks(scores, ev.targets, whole).numpy())
    for k in expected:
        np.testing.assert_array_equal(per[k], expected[k])
    known = np.ones(N_ITEMS + 1, dtype=bool)
    known[[0, 5, int(ev.targets[0])]] = False  # items the peer has no vector for
    per = evaluate_factors(q, rows, ev, known)
    ref = reference_ranks(scores.numpy(), ev.targets.numpy(), whole.numpy(), known)
    expected = metrics_from_ranks(ref)
    for k in expected:
        np.testing.assert_array_equal(per[k], expected[k])
    assert per["HR@20"][0] == 0  # an unscorable target is never a hit


def test_evaluate_factors_checks_shapes(tiny):
    with pytest.raises(ValueError, match="queries"):
        evaluate_factors(np.zeros((3, 4)), np.zeros((N_ITEMS + 1, 4)), tiny.test_eval)


def test_topk_lists_rank_as_the_evaluator(tiny):
    """A peer's own top-k (seen items filtered) gives the evaluator's metrics up to k."""
    ev = tiny.test_eval
    rng = np.random.default_rng(1)
    q = rng.normal(size=(len(ev), 4)).astype(np.float32)
    rows = rng.normal(size=(N_ITEMS + 1, 4)).astype(np.float32)
    scores = q @ rows.T
    topk = []
    for s, h in zip(scores, ev.seen.batch(slice(None)).numpy()):  # the whole history filtered
        s = s.copy()
        s[0] = -np.inf
        s[h] = -np.inf
        topk.append(np.argsort(-s, kind="stable")[:10])
    per = evaluate_factors(q, rows, ev)
    lib = topk_metrics(topk, ev.targets.numpy(), N_ITEMS, ks=(1, 5, 10))
    for k in lib:
        np.testing.assert_allclose(lib[k], per[k])
    assert ranks_from_topk([[4, 9, 2]], np.array([2]), N_ITEMS).tolist() == [2]
    assert ranks_from_topk([[4, 9, 2]], np.array([8]), N_ITEMS).tolist() == [N_ITEMS]


@pytest.mark.training
def test_rectools_sasrec_vectors_match_its_recommend(tiny):
    """In the bench environment: SASRec's vectors through the adapter rank as its recommend().
    Every test input here is shorter than the evaluator's history_length, so both remove the same
    seen items."""
    pytest.importorskip("rectools", reason="RecTools is only in the bench environment (make bench-peers)")
    pytest.importorskip("pytorch_lightning", reason="RecTools' torch extra is only in the bench environment")
    from bench.peers_rectools import fit_sasrec, sasrec_library_topk, topk_agreement
    hp = {"n_blocks": 1, "n_heads": 1, "n_factors": 8, "session_max_len": 5, "loss": "softmax", "batch_size": 16}
    fit = fit_sasrec(tiny, hp, patience=1, max_epochs=2, seed=0)
    assert 1 <= fit["epochs"] <= 2 and fit["validation_curve"][0]["epoch"] == 1
    pick = np.arange(len(tiny.test_eval))
    topk = sasrec_library_topk(fit, tiny, tiny.test_eval.users, 10)
    check = topk_agreement(fit["per_case"], pick, topk, tiny.test_eval.cases.targets, tiny.n_items)
    assert check["cases_with_same_hit"] == 1.0 and check["max_abs_NDCG_difference"] < 1e-9
