"""The handler's request stages (handler/seqrec_request.py): resolve builds one record per request
from one index lookup; features stay with their item; a failing stage costs only its requests.

    .venv/bin/python -m pytest -q tests/handler/test_request_stages.py
"""
import json

import numpy as np
import pytest
import torch
from handler_fixtures import load_handler, make_export, run_batch
from handler.seqrec_contract import parse_request
from handler.seqrec_request import Failure, Resolved, resolve


def scorable(h):
    return h.catalogue.decode(h.catalogue.rows.numpy())


def unavailable(h):
    cat = h.catalogue
    return sorted(set(cat.raw_ids.tolist()) - set(scorable(h)))


def rows_of(h, ids):
    """Raw ids -> the sorted matrix rows a reference computation expects."""
    return torch.sort(h.catalogue.positions(torch.from_numpy(h.catalogue.lookup(ids)))).values


def test_resolve_keeps_each_events_features_with_its_known_item(loaded):
    h, _ = loaded
    a, b, c = scorable(h)[:3]
    history = [{"item_id": a, "timestamp": 100, "event_type": "view", "source": "s1", "strength": 1},
               {"item_id": 7, "timestamp": 200, "event_type": "buy", "source": "s2", "strength": 2},
               {"item_id": "12abc", "timestamp": 300},
               {"item_id": str(b), "timestamp": 400, "event_type": "cart", "strength": 4},
               12, "12", 7,
               {"item_id": c, "timestamp": 600, "source": "s3"}]
    [rec] = resolve({0: parse_request({"history": history, "now": 1000})}, h.catalogue).values()
    assert isinstance(rec, Resolved)
    assert rec.history.items == h.catalogue.lookup([a, b, c]).tolist()
    assert rec.history.timestamps == [100, 400, 600]
    assert rec.history.event_types == ["view", "cart", ""]
    assert rec.history.sources == ["s1", "", "s3"]
    assert rec.history.strengths[:2] == [1, 4] and np.isnan(rec.history.strengths[2])
    assert rec.unknown == (7, "12abc", 12, "12") and rec.now == 1000


def test_resolve_bans_rows_once_and_candidates_exclude_them(loaded):
    h, _ = loaded
    a, b, c, d, e = scorable(h)[:5]
    u = unavailable(h)[0]
    body = {"history": [a, b, u], "exclude": [c, u, "nope"], "candidates": [e, b, c, d, d, u, "nope", 5]}
    seen, unseen = resolve({3: parse_request(body), 9: parse_request({**body, "exclude_seen": False})},
                           h.catalogue).values()
    assert torch.equal(seen.banned, rows_of(h, [a, b, c]))
    assert torch.equal(seen.candidates, rows_of(h, [d, e]))
    assert torch.equal(unseen.banned, rows_of(h, [c]))
    assert torch.equal(unseen.candidates, rows_of(h, [b, d, e]))
    assert seen.unknown == () == unseen.unknown  # an unavailable item is known, only never returned
    [no_cands] = resolve({0: parse_request({"history": [a]})}, h.catalogue).values()
    assert no_cands.candidates is None


def test_event_features_reach_the_model_aligned_when_unknown_ids_are_interleaved(tmp_path):
    """The features of an unknown event must vanish with it: a history with unknown events in
    between ranks exactly as the known events alone, and not as their features shifted by one."""
    d = make_export(tmp_path / "feats", num_items=80, use_time=True, use_event_type=True, use_strength=True,
                    event_types=["view", "buy"], strength_edges=[2.0, 4.0])
    h, ctx = load_handler(d)
    a, b, c = scorable(h)[:3]
    known = [{"item_id": a, "timestamp": 1_700_000_000, "event_type": "view", "strength": 1},
             {"item_id": b, "timestamp": 1_700_050_000, "event_type": "view", "strength": 1},
             {"item_id": c, "timestamp": 1_700_090_000, "event_type": "buy", "strength": 5}]
    stranger = {"item_id": 7, "timestamp": 1_600_000_000, "event_type": "buy", "strength": 5}
    interleaved = [known[0], stranger, known[1], dict(stranger, item_id="x"), known[2]]
    shifted = [dict(k, **{f: s[f] for f in ("timestamp", "event_type", "strength")})
               for k, s in zip(known, interleaved)]  # what a mask applied to ids only would score
    now = 1_700_100_000
    out = run_batch(h, ctx, [{"history": events, "now": now, "k": 20}
                             for events in (interleaved, known, shifted)])
    got, clean, wrong = (json.loads(o) for o in out)
    assert got["unknown_items"] == [7, "x"] and clean["unknown_items"] == []
    assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in clean["items"]]
    assert [i["score"] for i in got["items"]] == pytest.approx([i["score"] for i in clean["items"]], abs=1e-6)
    assert [i["score"] for i in wrong["items"]] != pytest.approx([i["score"] for i in clean["items"]], abs=1e-6)


def test_a_failed_batch_lookup_answers_500_for_the_parsed_requests_only(loaded, monkeypatch):
    h, ctx = loaded

    def broken(ids):
        raise RuntimeError("index unavailable")

    monkeypatch.setattr(h.catalogue, "lookup", broken)
    out = run_batch(h, ctx, [{"history": scorable(h)[:2]}, {"history": [], "k": 0}, {"history": []}])
    assert len(out) == 3 and [ctx.get_response_status(i)[0] for i in range(3)] == [500, 400, 500]
    assert json.loads(out[0]) == Failure.internal(RuntimeError("index unavailable")).body()
    assert json.loads(out[1])["type"] == "BadRequest"
