import numpy as np
import torch

from train.evaluate import metrics_from_ranks, summarize, target_ranks


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
