"""Fuzz the handler in process: 10,500 hostile and valid bodies, in random batches, driven the way
TorchServe drives it (ts.context.Context, per-request processors, the worker's JSON decoding).

    .venv/bin/python -m pytest -q tests/reliability/test_fuzz_handler.py

Every bad body must get a 400 BadRequest naming the problem, every valid one a 200 that obeys the
contract (devtools.fuzz_oracle.check_answer) and ranks exactly as the same request sent alone: a hostile
neighbour in the batch must cost nothing.
"""
import json
import random
from collections import Counter

import pytest
from devtools.fuzz_oracle import Catalog, check_answer, same_ranking, worker_input
from devtools.fuzz_requests import generate
from handler_fixtures import load_handler, make_export, run_batch

N_INT, N_STR = 8000, 2500  # int ids (the common case) and string ids
MAX_BATCH = 16              # handler/model-config.yaml's batchSize


def fuzz(loaded, cat: Catalog, n: int, seed: int):
    h, ctx = loaded
    rng = random.Random(seed)
    cases = list(generate(cat, n, seed))
    failures, kinds, statuses = [], Counter(), Counter()
    i = 0
    while i < len(cases):
        batch = cases[i:i + rng.randint(1, MAX_BATCH)]
        i += len(batch)
        out = run_batch(h, ctx, [worker_input(c) for c in batch])
        got = [(ctx.get_response_status(j)[0], json.loads(o)) for j, o in enumerate(out)]
        for case, (status, body) in zip(batch, got):
            kinds[case.kind.split("/")[0] + "/" + case.kind.split("/")[1]] += 1
            statuses[status] += 1
            problem = check_answer(case, status, body, cat)
            if problem is None and case.valid:
                [alone] = run_batch(h, ctx, [worker_input(case)])
                problem = same_ranking(body, json.loads(alone))
                problem = problem and f"differs from the request sent alone: {problem}"
            if problem:
                failures.append((case.kind, case.data[:200], problem))
    return failures, kinds, statuses


@pytest.mark.parametrize("id_type,n,seed,index", [("int", N_INT, 1, "none"), ("str", N_STR, 2, "none"),
                                                ("int", N_STR, 3, "hnsw:M=8,ef_construction=20,ef_search=16"),
                                                ("str", N_STR, 4, "pq:m=8,shortlist=16")])
def test_fuzz_in_process(tmp_path, id_type, n, seed, index):
    """Also through the candidate index (a shallow one, so it misses items): the same contract,
    and a request's answer never depends on the batch it came in."""
    export = make_export(tmp_path / "export", str_ids=id_type == "str", index_spec=index)
    cat = Catalog.from_export(export)
    failures, kinds, statuses = fuzz(load_handler(export), cat, n, seed)
    assert not failures, f"{len(failures)} of {n} wrong; first ones:\n" + "\n".join(map(str, failures[:15]))
    assert sum(kinds.values()) == n and set(statuses) == {200, 400}, statuses
    bad = sum(v for k, v in kinds.items() if k.startswith("bad/"))
    assert 0.5 * n < bad < 0.7 * n, kinds
    # every generator came up, the big and deep ones included
    assert {"bad/too_many", "bad/deep", "bad/non_finite", "bad/invalid_json", "bad/empty"} <= set(kinds), kinds


def test_lone_surrogates_are_unknown_ids_and_labels(tmp_path):
    """Found by the fuzzer: "\\ud800" is legal JSON but has no UTF-8 form. As a string item id it
    made the id lookup raise out of handle() (the whole batch failed); as an event_type or source
    it could not cross into TorchScript (500). Now: an unknown id, an unknown label."""
    export = make_export(tmp_path / "export", str_ids=True)
    h, ctx = load_handler(export)
    known = Catalog.from_export(export).ids[:2]
    bodies = [{"history": [known[0], "\ud800", "a\udfffb"]},
              {"history": [{"item_id": known[1], "event_type": "\ud800", "source": "x\udc00"}]},
              {"history": known}]
    out = run_batch(h, ctx, bodies)
    assert [ctx.get_response_status(i)[0] for i in range(3)] == [200, 200, 200], out
    assert json.loads(out[0])["unknown_items"] == ["\ud800", "a\udfffb"]
    assert json.loads(out[1])["fallback"] is None and json.loads(out[1])["unknown_items"] == []
