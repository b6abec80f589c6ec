import numpy as np
import pytest
import pandas as pd
import torch

from handler.seqrec_artifact import ItemIndex
from train.negatives import CandidateSampler
from train.split import leave_one_out, temporal_split


def events():
    df = pd.DataFrame({"user_id": [1] * 5 + [2] * 2 + [3] * 3,
                       "item_id": [10, 11, 12, 13, 14, 10, 11, 12, 13, 10],
                       "timestamp": [1, 2, 3, 4, 5, 1, 2, 6, 7, 8.0]})
    idx = ItemIndex.from_items(df["item_id"])
    return df.assign(item_idx=idx.encode(df["item_id"]))


def test_item_index_keeps_types_and_reports_unknown():
    idx = ItemIndex.from_items(pd.Series(["b", "a", "b"]))
    assert idx.id_type == "str" and idx.encode(["a", "zz"]).tolist() == [1, 0]
    assert ItemIndex.from_items(pd.Series([7, 3])).decode([1, 2]) == [3, 7]


def test_leave_one_out():
    s = leave_one_out(events(), min_events=3)
    assert s.counts == {"users": 3, "users_evaluated": 2, "users_too_short_train_only": 1}
    assert [len(r) for r in s.train] == [3, 2, 1]
    assert s.test.targets.tolist() == [5, 1] and s.valid.targets.tolist() == [4, 4]
    assert [len(h) for h in s.test.histories] == [4, 2]


def test_temporal_split_uses_only_the_past():
    ev = events()
    s = temporal_split(ev, cut=0.8)
    ts = ev["timestamp"].to_numpy()
    for h, t in zip(s.test.histories, s.test.now):
        assert (ts[h] < t).all()
    assert s.counts["test_cut"] > s.counts["valid_cut"]


def test_candidates_hold_every_target_once():
    sampler = CandidateSampler(100, 32)
    targets = torch.tensor([[5, 7, 0], [7, 99, 0]])
    cands, pos = sampler.sample(targets, torch.Generator().manual_seed(0))
    assert len(set(cands.tolist())) == len(cands) <= 32
    mask = targets > 0
    assert torch.equal(cands[pos[mask]], targets[mask])
    assert 0 not in cands.tolist()


def test_popularity_sampling_has_logq():
    pop = torch.tensor([0, 1000, 10, 1, 0.0])
    s = CandidateSampler(4, 3, pop, mode="popularity")
    assert s.log_q[1] > s.log_q[2] > s.log_q[3]
    draws = torch.cat([s.sample(torch.tensor([1]), torch.Generator().manual_seed(i))[0] for i in range(200)])
    assert (draws == 1).sum() > (draws == 3).sum()


def test_batch_with_more_targets_than_sample_size():
    pop = torch.ones(11)
    for mode in ("uniform", "popularity"):
        s = CandidateSampler(10, 3, pop, mode=mode)
        cands, pos = s.sample(torch.tensor([[1, 2, 3, 4, 5]]), torch.Generator().manual_seed(0))
        assert cands.tolist() == [1, 2, 3, 4, 5] and pos.tolist() == [[0, 1, 2, 3, 4]]


def test_inclusion_logq_is_the_probability_of_being_in_the_candidate_set():
    # "draw" corrects by one draw's log q; "inclusion" by log P(in the step's set): M target
    # positions drawn from the data plus n random draws, checked here against sampled sets.
    pop = torch.tensor([0.0, 50.0, 20.0, 8.0, 3.0, 1.0, 1.0])
    targets = torch.tensor([[1, 0]])                      # one target position: M = 1, n = 7
    draw = CandidateSampler(6, 8, pop, "popularity")
    incl = CandidateSampler(6, 8, pop, "popularity", correction="inclusion")
    items = torch.arange(1, 7)
    assert torch.equal(draw.log_q_of(items, targets), draw.log_q[items])
    sets = [incl.sample(targets, torch.Generator().manual_seed(i))[0] for i in range(4000)]
    drawn = torch.tensor([[j in s.tolist() for j in range(1, 7)] for s in sets]).double().mean(0)
    data = (pop / pop.sum()).double()[1:]                 # the target's own draw from the data
    expected = 1 - (1 - data) * (1 - drawn)
    got = incl.log_q_of(items, targets).double().exp()
    assert torch.allclose(got[1:], expected[1:], atol=0.03)   # item 1 is this batch's target
    # a popular item is in almost every set: corrected by ~log 1, where one draw says log q
    assert got[1] > 0.85 and draw.log_q[2].exp() < 0.3
    assert torch.all(incl.log_q_of(items, targets) >= draw.log_q[items])
    with pytest.raises(ValueError, match="correction"):
        CandidateSampler(6, 8, pop, "popularity", correction="count")


def test_inclusion_logq_needs_popularity_negatives_and_stays_finite():
    from train.config import ConfigError, TrainConfig
    for kw in ({"negatives": "uniform"}, {"negatives": "popularity", "logq": False}):
        with pytest.raises(ConfigError, match="logq_correction"):
            TrainConfig(logq_correction="inclusion", **kw)
    # an item no draw reaches (no data, no random draws left) gets the same floor as log q
    s = CandidateSampler(3, 1, torch.tensor([0.0, 5.0, 0.0, 0.0]), "popularity", correction="inclusion")
    got = s.log_q_of(torch.tensor([1, 2, 3]), torch.tensor([[1]]))
    assert torch.isfinite(got).all() and float(got.min()) >= float(s.log_q.min()) - 1e-3
