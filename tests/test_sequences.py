"""The vectorised split and windows against the per-user loops they replaced (kept here as the
oracle, built on pad_batch, the one padding rule): identical rows, items, targets, lengths and
features, on the synthetic marketplace and on edge cases.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_sequences.py
"""
import numpy as np
import pandas as pd
import pytest
import torch

from handler.seqrec_artifact import ItemIndex
from model import ModelConfig, SequenceModel
from train.sequences import EventColumns, SequentialDataset, encode_cases
from train.split import RowRanges, leave_one_out, temporal_split
from train.synthetic import generate_marketplace

FEATURES = dict(use_time=True, use_event_type=True, use_source=True, use_strength=True,
                event_types=["view", "purchase"], sources=["feed", "search"], strength_edges=[2.0])


# ---- the oracle: the code before vectorisation, one Python step per user and per window
def groups(events):
    users = events["user_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    return np.split(np.arange(len(events)), starts[1:])


def loo_oracle(events, min_events):
    train, test_h, test_t, valid_h, valid_t = [], [], [], [], []
    for rows in groups(events):
        if len(rows) < max(min_events, 3):
            train.append(rows)
            continue
        train.append(rows[:-2]); valid_h.append(rows[:-2]); valid_t.append(rows[-2])
        test_h.append(rows[:-1]); test_t.append(rows[-1])
    return train, (valid_h, valid_t), (test_h, test_t)


def temporal_oracle(events, cut):
    ts = events["timestamp"].to_numpy()
    test_cut, valid_cut = np.quantile(ts, cut), np.quantile(ts, max(0.0, 1 - 2 * (1 - cut)))
    train, v, t = [], ([], []), ([], [])
    for rows in groups(events):
        x = ts[rows]
        if (x < valid_cut).any():
            train.append(rows[x < valid_cut])
        for hist, after, out in ((rows[x < valid_cut], rows[(x >= valid_cut) & (x < test_cut)], v),
                                 (rows[x < test_cut], rows[x >= test_cut], t)):
            if len(after) and len(hist):
                out[0].append(hist); out[1].append(after[0])
    return train, v, t


class OldColumns:
    """EventColumns as it was: one string object per event."""

    def __init__(self, events):
        self.items = events["item_idx"].to_numpy(dtype=np.int64)
        self.timestamps = events["timestamp"].to_numpy(dtype=np.float64)
        self.event_types = events["event_type"].astype(str).to_numpy()
        self.sources = events["source"].astype(str).to_numpy()
        self.strengths = events["strength"].to_numpy(dtype=np.float64)

    def features(self, model, rows, now):
        if not (model.use_time or model.use_event_type or model.use_source or model.use_strength):
            return []
        return model.encode_events(self.timestamps[rows].tolist(), self.event_types[rows].tolist(),
                                   self.sources[rows].tolist(), self.strengths[rows].tolist(), float(now))


def windows_oracle(model, cols, user_rows):
    t, seqs, feats, targets = model.total_length, [], [], []
    for rows in user_rows:
        end = len(rows)
        while end >= 2:
            start = max(0, end - t - 1)
            w = rows[start:end]
            feats.append(cols.features(model, w[:-1], cols.timestamps[w[-1]]))
            seqs.append(cols.items[w[:-1]].tolist()); targets.append(cols.items[w[1:]].tolist())
            end = start + 1
    items, f, lengths = model.pad(seqs, feats)
    return items, f, model.pad(targets, [[] for _ in targets])[0], lengths


def cases_oracle(model, cols, histories, now):
    return model.pad([cols.items[h].tolist() for h in histories],
                     [cols.features(model, h, n) for h, n in zip(histories, now)])


# ---- data
def indexed(events):
    return events.assign(item_idx=ItemIndex.from_items(events["item_id"]).encode(events["item_id"]))


def edge_events():
    """Users with 1, 2, 3, total_length (6), 7, 8 and 20 events; ties on time (broken by item id),
    a NaN strength, a missing event type."""
    rows = []
    for user, n in enumerate((1, 2, 3, 6, 7, 8, 20), start=1):
        for k in range(n):
            rows.append((user, 100 + (7 * k + user) % 13, float(1000 * user + 60 * (k // 2) * (k % 3 + 1)),
                         "purchase" if k % 4 == 3 else ("view" if k % 5 else None),
                         "feed" if k % 2 else "search", float(k % 3) if k % 6 else np.nan))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "source", "strength"])
    return indexed(df.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True))


@pytest.fixture(scope="module", params=["synthetic", "edges"])
def events(request):
    if request.param == "edges":
        return edge_events()
    ev, _ = generate_marketplace(n_users=300, n_items=200, seed=3)
    return indexed(ev.assign(strength=np.where(np.arange(len(ev)) % 7, 1.0 + np.arange(len(ev)) % 4, np.nan)))


def same_rows(ranges, arrays):
    assert len(ranges) == len(arrays)
    assert all(np.array_equal(a, b) for a, b in zip(ranges, arrays))
    flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
    assert np.array_equal(ranges.flat(), flat)


def same_tensors(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.equal(g.long(), w.long())


@pytest.mark.parametrize("min_events", [3, 4, 8])
def test_leave_one_out_equals_the_loop(events, min_events):
    s = leave_one_out(events, min_events)
    train, (vh, vt), (th, tt) = loo_oracle(events, min_events)
    same_rows(s.train, train)
    same_rows(s.valid.histories, vh); same_rows(s.test.histories, th)
    items = events["item_idx"].to_numpy()
    assert s.valid.targets.tolist() == items[vt].tolist() and s.test.targets.tolist() == items[tt].tolist()
    assert s.test.users.tolist() == events["user_id"].to_numpy()[tt].tolist()
    assert s.counts["users_too_short_train_only"] == len(train) - len(tt)


@pytest.mark.parametrize("cut", [0.5, 0.8, 0.9])
def test_temporal_split_equals_the_loop(events, cut):
    s = temporal_split(events, cut)
    train, (vh, vt), (th, tt) = temporal_oracle(events, cut)
    same_rows(s.train, train)
    same_rows(s.valid.histories, vh); same_rows(s.test.histories, th)
    assert s.test.now.tolist() == events["timestamp"].to_numpy()[tt].tolist()


def test_temporal_split_refuses_unsorted_events():
    ev = indexed(pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": [5.0, 1.0]}))
    with pytest.raises(ValueError, match="sorted"):
        temporal_split(ev)


@pytest.mark.parametrize("features", [False, True])
@pytest.mark.parametrize("total_length", [1, 2, 6])
def test_windows_and_cases_equal_pad_batch(events, features, total_length):
    kw = FEATURES if features else {}
    model = SequenceModel(ModelConfig(num_items=int(events["item_idx"].max()), embedding_dim=4, hidden_dim=4,
                                      total_length=total_length, **kw))
    cols = EventColumns(events)
    split = leave_one_out(events, 3)
    data = SequentialDataset(model, cols, split.train)
    same_tensors((data.items, data.features, data.targets, data.lengths),
                 windows_oracle(model, OldColumns(events), list(split.train)))
    assert data.items.dtype == torch.int32 and data.lengths.dtype == torch.int64
    assert data.num_events == int(split.train.lengths.clip(min=1).sum() - len(split.train))
    for cases in (split.test, split.test.subset(3, seed=1)):
        got = encode_cases(model, cols, cases)
        same_tensors(got, cases_oracle(model, OldColumns(events), list(cases.histories), cases.now))
        assert all(x.dtype == torch.int64 for x in got)  # the evaluator scatters with the items


def test_encode_cases_in_slices_equals_all_at_once(events):
    model = SequenceModel(ModelConfig(num_items=int(events["item_idx"].max()), total_length=4, **FEATURES))
    cols, cases = EventColumns(events), leave_one_out(events).test
    whole = encode_cases(model, cols, cases)
    parts = [encode_cases(model, cols, cases, np.arange(a, min(a + 2, len(cases)))) for a in range(0, len(cases), 2)]
    same_tensors(whole, [torch.cat(p) for p in zip(*parts)])


def test_subset_is_a_sorted_sample_without_replacement():
    cases = leave_one_out(edge_events()).test
    sub = cases.subset(2, seed=5)
    pick = np.sort(np.random.default_rng(5).choice(len(cases), 2, replace=False))
    assert sub.targets.tolist() == cases.targets[pick].tolist()
    assert [h.tolist() for h in sub.histories] == [cases.histories[i].tolist() for i in pick]
    assert cases.subset(0) is cases and cases.subset(len(cases)) is cases


def test_row_ranges_flat_with_empty_ranges():
    r = RowRanges(np.array([3, 5, 5, 9]), np.array([5, 5, 7, 10]))
    assert r.flat().tolist() == [3, 4, 5, 6, 9] and r.lengths.tolist() == [2, 0, 2, 1]
    assert RowRanges.empty().flat().tolist() == [] and len(RowRanges.empty()) == 0
