"""Item vectors that start from the training events' co-occurrence (pretrained=svd)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train.config import TrainConfig
from train.errors import UserError
from train.pipeline import build_model, prepare
from train.pretrained import svd_item_vectors


def _cos(v: torch.Tensor, a: int, b: int) -> float:
    return float(F.cosine_similarity(v[a], v[b], dim=0))


def test_the_window_decides_which_pairs_co_occur():
    # Two pairs of items in a row, the first from 1..4, the second from 5..8, among sequences of
    # unrelated filler (10..29). Adjacent items only: the two groups stay apart (only the middle
    # pair of each sequence meets); a window of 2 pairs each item with one of the other group.
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(300):
        a, b = rng.choice([1, 2, 3, 4], 2, replace=False), rng.choice([5, 6, 7, 8], 2, replace=False)
        seqs += [np.r_[a, b], rng.choice(np.arange(10, 30), 4, replace=False)]
    near = svd_item_vectors(seqs, 29, 8, window=1)
    assert near.shape == (30, 8) and not near[0].any()
    assert _cos(near, 1, 2) > 0.9 and _cos(near, 5, 6) > 0.9 and _cos(near, 1, 6) < 0.5
    far = svd_item_vectors(seqs, 29, 8, window=2)
    assert _cos(far, 1, 6) > 0.9 and abs(_cos(far, 1, 12)) < 0.2


def test_svd_window_must_be_positive():
    with pytest.raises(UserError, match="svd_window"):
        TrainConfig.from_dict({"svd_window": 0})


def test_a_refit_factorises_the_events_it_trains_on():
    cfg = TrainConfig.from_dict({"data": "synthetic", "synthetic_users": 300, "synthetic_items": 200,
                                 "pretrained": "svd", "model": {"embedding_dim": 16}})
    prep = prepare(cfg)
    rows = prep.split.train_with_valid
    expected = svd_item_vectors([prep.cols.items[r] for r in rows], len(prep.index), 16, cfg.svd_window, cfg.seed)
    first, refit = build_model(cfg, prep), build_model(cfg, prep, rows)
    assert torch.allclose(refit.item_embedding.weight, F.normalize(expected, dim=-1), atol=1e-6)
    assert not torch.allclose(first.item_embedding.weight, refit.item_embedding.weight)
