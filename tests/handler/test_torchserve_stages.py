"""Every seed stage through a real TorchServe: a model trained with time, content, event type and
source (the ablation's stage "all") is archived, served and answers events with every field, some
or none; a catalogue update (python -m train.catalog) then adds new listings and sells one, and is
served as version 1.1 beside 1.0 without retraining.

    .venv/bin/python -m pytest -q tests/handler/test_torchserve_stages.py
"""
import subprocess
import sys

import pandas as pd
import pytest
from torchserve_fixtures import ROOT, requires_java, tiny_export

from devtools.local_server import LocalTorchServe, archive

pytestmark = [pytest.mark.torchserve, requires_java]

ALL_STAGES = ["model.use_time=true", "model.use_content=true", "model.use_event_type=true",
              "model.use_source=true"]
MODEL_YAML = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 5\nresponseTimeout: 60\n"
NEW_IDS = [990_001, 990_002, 990_003]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("stages")
    export = tiny_export(work / "export", "1.0", users=400, items=300, overrides=ALL_STAGES)
    items = pd.read_parquet(export / "items.parquet")
    live = items[items["available"]]
    sold = live.iloc[[1]].assign(available=False)
    new = pd.DataFrame({"item_id": NEW_IDS, "category": live["category"].iloc[0],
                        "price": float(live["price"].median()), "available": True})
    pd.concat([new, sold[["item_id", "category", "price", "available"]]]).to_csv(work / "update.csv", index=False)
    r = subprocess.run([sys.executable, "-m", "train.catalog", "--export", str(export), "--items",
                        str(work / "update.csv"), "--out", str(work / "export-1.1"), "--version", "1.1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (work / "model.yaml").write_text(MODEL_YAML)
    store = work / "model_store"
    archive(work / "export-1.1", store, work / "model.yaml")
    archive(export, store, work / "model.yaml")  # last: seqrec.mar -> seqrec_1.0.mar, the default
    with LocalTorchServe(store, ["seqrec=seqrec.mar", "seqrec=seqrec_1.1.mar"], workdir=work / "server") as srv:
        srv.wait_ready(["/predictions/seqrec", "/predictions/seqrec/1.1"])
        yield srv, live["item_id"].tolist(), int(sold["item_id"].iloc[0])


def ask(srv, body, path="/predictions/seqrec"):
    r = srv.post(path, body)
    assert r.status_code == 200, r.text
    return r.json()


def test_events_with_all_some_or_no_fields(served):
    srv, live, _ = served
    t0 = 1_700_000_000
    full = [{"item_id": i, "timestamp": t0 + 300 * n, "event_type": "view", "source": "search", "strength": 1.0}
            for n, i in enumerate(live[:4])]
    sparse = [{"item_id": live[0]}, {"item_id": live[1], "timestamp": t0}, live[2],
              {"item_id": live[3], "event_type": "never-seen", "source": "from-mars"}]
    answers = [ask(srv, {"history": h, "k": 8, "now": t0 + 3600}) for h in (full, sparse, live[:4])]
    assert all(len(a["items"]) == 8 and a["fallback"] is None and a["unknown_items"] == [] for a in answers)
    as_ids = [[it["item_id"] for it in a["items"]] for a in answers]
    assert as_ids[0] != as_ids[2]  # time, type and source reach the served model
    later = ask(srv, {"history": full, "k": 8, "now": t0 + 30 * 86400})
    assert [it["item_id"] for it in later["items"]] != as_ids[0] or \
        [it["score"] for it in later["items"]] != [it["score"] for it in answers[0]["items"]]  # `now` counts


def test_catalogue_update_serves_new_listings_and_hides_the_sold_one(served):
    srv, live, sold = served
    body = {"history": live[:3], "k": 1000, "exclude_seen": False}
    old = ask(srv, body)
    new = ask(srv, body, "/predictions/seqrec/1.1")
    assert (old["model_version"], new["model_version"]) == ("1.0", "1.1")
    old_ids, new_ids = {it["item_id"] for it in old["items"]}, {it["item_id"] for it in new["items"]}
    assert sold in old_ids and sold not in new_ids
    assert set(NEW_IDS) <= new_ids and not set(NEW_IDS) & old_ids
    assert new_ids - set(NEW_IDS) == old_ids - {sold}
    # A new listing in a history: known to 1.1 (its content vector), unknown to 1.0.
    assert ask(srv, {"history": [NEW_IDS[0]], "k": 3}, "/predictions/seqrec/1.1")["unknown_items"] == []
    assert ask(srv, {"history": [NEW_IDS[0]], "k": 3})["unknown_items"] == [NEW_IDS[0]]
