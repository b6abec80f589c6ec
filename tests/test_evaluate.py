import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from model import ModelConfig, SequenceModel
from train.config import TrainConfig
from train.evaluate import (chunked_ranks, evaluate_ranking, fixed_scorer, metrics_from_ranks, model_scorer,
                            popularity_scorer, summarize, target_ranks)
from train.pipeline import prepare, sample_test_cases
from train.sequences import EventColumns, encode_cases, seen_items
from train.split import Cases, RowRanges


def test_ties_count_against_the_target():
    scores = torch.tensor([[0.0, 0.5, 0.5, 0.5, 0.1]])
    r = target_ranks(scores, torch.tensor([2]), torch.zeros(1, 1, dtype=torch.long))
    assert r.tolist() == [2]  # two other items score as high as the target


def test_history_items_are_removed_and_padding_ignored():
    scores = torch.tensor([[9.0, 0.9, 0.8, 0.1, 0.7]])
    hist = torch.tensor([[1, 2, 0]])
    assert target_ranks(scores, torch.tensor([3]), hist).tolist() == [1]           # only item 4 above
    assert target_ranks(scores, torch.tensor([3]), hist, exclude_seen=False).tolist() == [3]


def test_metric_values():
    m = metrics_from_ranks(np.array([0, 1, 9, 10]))
    assert m["HR@1"].tolist() == [1, 0, 0, 0]
    assert m["HR@10"].tolist() == [1, 1, 1, 0]
    assert np.allclose(m["NDCG@10"], [1, 1 / np.log2(3), 1 / np.log2(11), 0])
    assert np.allclose(m["MRR@5"], [1, 0.5, 0, 0])
    s = summarize(m, ci=True)
    assert s["HR@10"] == 0.75 and s["users"] == 4
    lo, hi = s["HR@10_ci95"]
    assert 0 <= lo <= 0.75 <= hi <= 1


# The chunked evaluator against the definition (target_ranks on whole score rows).
CHUNKS = [1, 2, 3, 7, 64, 199, 200, 201, 10_000]


def _histories(rng, b, n_items, max_len, targets, share_in_history=0.3):
    """(B, T) histories padded with 0, of random lengths (some empty); some hold their target."""
    h = torch.zeros(b, max_len, dtype=torch.long)
    for i in range(b):
        n = int(rng.integers(0, max_len + 1))
        h[i, :n] = torch.as_tensor(rng.integers(1, n_items + 1, n))
        if n and rng.random() < share_in_history:
            h[i, int(rng.integers(0, n))] = targets[i]
    return h


def _case(seed, ties):
    rng = np.random.default_rng(seed)
    b, n_items, d = 41, 200, 6
    if ties:  # small integers: many exactly equal scores, and exact products in every summation order
        rows = torch.as_tensor(rng.integers(-1, 2, (n_items + 1, d)), dtype=torch.float32)
        queries = torch.as_tensor(rng.integers(-1, 2, (b, d)), dtype=torch.float32)
    else:
        rows = torch.as_tensor(rng.normal(size=(n_items + 1, d)), dtype=torch.float32)
        queries = torch.as_tensor(rng.normal(size=(b, d)), dtype=torch.float32)
    rows[0] = 0
    targets = torch.as_tensor(rng.integers(1, n_items + 1, b))
    return queries, rows, targets, _histories(rng, b, n_items, 9, targets)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_ranks_equal_the_definition(ties, exclude_seen, chunk):
    for seed in range(3):
        q, rows, targets, hist = _case(seed, ties)
        want = target_ranks(q @ rows.T, targets, hist, exclude_seen)
        got = chunked_ranks(q, rows, targets, hist, exclude_seen, chunk_rows=chunk)
        assert torch.equal(got, want)
        in_history = (hist == targets.view(-1, 1)).any(1)
        assert in_history.any() and (~in_history).any()
        if ties:
            assert (want[~in_history] > 0).any() and len(set(want.tolist())) > 5


@pytest.mark.parametrize("chunk", [1, 5, 64, 10_000])
def test_unscorable_rows_are_never_counted(chunk):
    q, rows, targets, hist = _case(7, ties=True)
    scorable = torch.zeros(rows.size(0), dtype=torch.bool)
    scorable[120:] = True  # e.g. only new items; targets outside the set are never hits
    scores = (q @ rows.T).masked_fill(~scorable, -torch.inf)
    for exclude_seen in (True, False):
        want = target_ranks(scores, targets, hist, exclude_seen)
        got = chunked_ranks(q, rows, targets, hist, exclude_seen, scorable, chunk_rows=chunk)
        assert torch.equal(got, want)
        seen = (hist == targets.view(-1, 1)).any(1) & exclude_seen
        assert (got[targets < 120] == rows.size(0) - 1).all() and (got[(targets >= 120) & ~seen] < 81).all()


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_model_and_popularity_through_the_chunked_evaluator(exclude_seen):
    """evaluate_ranking in batches and chunks = the definition on whole score matrices."""
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(num_items=300, embedding_dim=8, hidden_dim=12, total_length=6)).eval()
    rng = np.random.default_rng(1)
    seqs = [rng.integers(1, 301, int(rng.integers(1, 9))).tolist() for _ in range(70)]
    items, feats, lengths = model.pad(seqs, [[] for _ in seqs])
    targets = torch.as_tensor(rng.integers(1, 301, 70))
    targets[:10] = items[:10, 0]  # the target in the history
    popularity = np.r_[0, rng.integers(0, 4, 300)]  # few distinct counts: ties
    with torch.no_grad():
        full = {"model": model(items, feats, lengths) @ model.item_matrix().T,
                "popularity": torch.as_tensor(popularity, dtype=torch.float32).expand(70, -1)}
    for name, scorer in (("model", model_scorer(model)), ("popularity", popularity_scorer(popularity))):
        want = metrics_from_ranks(target_ranks(full[name], targets, items, exclude_seen).numpy())
        got = evaluate_ranking(scorer, items, feats, lengths, targets, exclude_seen, batch_size=16, chunk_rows=37)
        assert want.keys() == got.keys()
        assert all(np.array_equal(want[k], got[k]) for k in want)
    if exclude_seen:  # a target in the history is removed with it: never a hit
        assert not got["HR@20"][:10].any()


def test_test_users_beyond_the_cap_are_a_stated_seeded_sample():
    cfg = TrainConfig(data="synthetic", synthetic_users=300, synthetic_items=100, max_test_users=50)
    full = prepare(cfg).split.test
    target_of = dict(zip(full.users.tolist(), full.targets.tolist()))
    cases, record = sample_test_cases(full, cfg)
    assert record == {"users": 50, "of": len(full), "max_test_users": 50, "sampled": True, "seed": 0}
    assert len(cases) == 50 == len(set(cases.users.tolist())) and len(full) > 200
    assert all(target_of[u] == t for u, t in zip(cases.users.tolist(), cases.targets.tolist()))
    assert np.array_equal(sample_test_cases(full, cfg)[0].users, cases.users)  # seeded
    assert set(sample_test_cases(full, dataclasses.replace(cfg, seed=1))[0].users.tolist()) != set(cases.users.tolist())
    for cap in (0, len(full), len(full) + 1):  # at or under the cap: every user, no sample
        every, record = sample_test_cases(full, dataclasses.replace(cfg, max_test_users=cap))
        assert len(every) == len(full) and not record["sampled"] and record["seed"] is None


def test_fixed_scores_keep_every_value_exactly():
    counts = np.r_[0, 2**24 - 1, 2**24 - 2, 5]
    assert fixed_scorer(counts).rows.dtype == torch.float32  # exact in float32: the cheaper product
    for values in (np.r_[0, 2**24 + 1, 2**24, 5], np.r_[0.0, 0.1, 0.3, 0.2]):  # not exact in float32
        s = fixed_scorer(values)
        assert s.rows.dtype == torch.float64 and np.array_equal(s.rows.view(-1).numpy(), values)
        items, targets = torch.tensor([[3, 0], [0, 0]]), torch.tensor([1, 2])
        ranks = chunked_ranks(s.query(items, None, None), s.rows, targets, items, chunk_rows=2)
        want = target_ranks(torch.as_tensor(values, dtype=torch.float64).expand(2, -1), targets, items)
        assert torch.equal(ranks, want) and ranks[0] != ranks[1]  # 2^24 + 1 and 2^24 stay apart


def test_seen_removes_the_whole_history_not_only_the_model_window():
    """The anchors remove every item a user has seen: with `seen`, an item older than the model's
    total_length window is removed too; without it only the window is."""
    model = SequenceModel(ModelConfig(num_items=5, embedding_dim=4, hidden_dim=4, total_length=2)).eval()
    # One user, history 4, 1, 2 (item 4 is outside the window of 2); fixed scores put item 4 first.
    cols = EventColumns(pd.DataFrame({"item_idx": [4, 1, 2], "timestamp": [1.0, 2.0, 3.0]}))
    cases = Cases(RowRanges(np.array([0]), np.array([3])), np.array([3]), np.array([0.0]), np.array([7]))
    items, feats, lengths = encode_cases(model, cols, cases)
    assert items.tolist() == [[1, 2]]
    scorer = fixed_scorer(np.r_[0.0, 0.9, 0.8, 0.5, 0.95, 0.1])
    target = torch.tensor([3])
    window = evaluate_ranking(scorer, items, feats, lengths, target)
    whole = evaluate_ranking(scorer, items, feats, lengths, target, seen=seen_items(cols, cases))
    assert window["HR@1"].tolist() == [0] and whole["HR@1"].tolist() == [1]
    with pytest.raises(ValueError, match="seen has 1 cases"):
        evaluate_ranking(scorer, torch.cat([items, items]), feats.expand(2, -1, -1), lengths.repeat(2),
                         target.repeat(2), seen=seen_items(cols, cases))
