"""Catalogue updates without retraining (python -m train.catalog): new listings get content vectors,
sold ones become unavailable, the new export is checksummed and loads in the handler's catalogue.

    .venv/bin/python -m pytest -q tests/test_catalog.py
"""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from handler.seqrec_artifact import ExportError, sha256_file, verify_export
from model import ModelConfig
from train.catalog import main as catalog_main, rebuild
from train.config import TrainConfig
from train.content import encode_content
from train.pipeline import run

pytestmark = pytest.mark.training

TINY = dict(data="synthetic", synthetic_users=200, synthetic_items=120, epochs=1, batch_size=64, sample_size=128,
            model={"embedding_dim": 8, "hidden_dim": 16, "total_length": 10})


def export(out: Path, **model) -> Path:
    cfg = TrainConfig.from_dict({**TINY, "version": "1.0", "model": {**TINY["model"], **model}})
    run(cfg, out)
    return out


@pytest.fixture(scope="module")
def content_export(tmp_path_factory):
    return export(tmp_path_factory.mktemp("content"), use_content=True, use_time=True)


def update_table(items: pd.DataFrame) -> pd.DataFrame:
    sold = items[items["available"]].iloc[0]
    repriced = items[items["available"]].iloc[1]
    return pd.DataFrame({
        "item_id": [555001, 555002, sold["item_id"], repriced["item_id"]],
        "category": ["furniture", "books", sold["category"], repriced["category"]],
        "price": [120.0, 8.5, sold["price"], repriced["price"] * 10],
        "available": [True, True, False, True],
    })


def test_rebuild_adds_new_items_marks_sold_and_checksums(content_export, tmp_path):
    old_items = pd.read_parquet(content_export / "items.parquet")
    old_vec = np.load(content_export / "item_vectors.npy")
    upd = update_table(old_items)
    upd.to_csv(tmp_path / "new_items.csv", index=False)
    out = tmp_path / "v2"
    assert catalog_main(["--export", str(content_export), "--items", str(tmp_path / "new_items.csv"),
                         "--out", str(out), "--version", "1.1"]) == 0

    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model_version"] == "1.1" and meta["num_items"] == len(old_items) + 2
    rec = meta["catalog_update"]
    assert (rec["added"], rec["updated"], rec["newly_unavailable"], rec["base_version"]) == (2, 2, 1, "1.0")
    for name, digest in meta["files"].items():
        assert sha256_file(out / name) == digest
    items = pd.read_parquet(out / "items.parquet")
    vec = np.load(out / "item_vectors.npy", allow_pickle=False)
    assert vec.shape == (len(items) + 1, old_vec.shape[1]) and vec.dtype == np.float32
    assert items["item_id"].tolist()[:len(old_items)] == old_items["item_id"].tolist()  # indices kept
    new = items.tail(2)
    assert new["item_id"].tolist() == [555001, 555002] and (new["popularity"] == 0).all() and new["available"].all()
    assert not items.loc[items["item_id"] == upd["item_id"][2], "available"].item()  # sold
    # New items have unit vectors from content alone: exactly what the model computes for that content.
    assert np.allclose(np.linalg.norm(vec[-2:], axis=1), 1, atol=1e-5)
    mc = ModelConfig.from_dict(meta["model_config"])
    model = torch.jit.load(str(out / "model.pt"))
    c, t, n = encode_content(mc, upd.iloc[:2])
    assert torch.equal(model.item_categorical[-2:], c) and torch.allclose(model.item_numeric[-2:], n)
    assert np.allclose(vec, model.item_matrix().detach().numpy(), atol=1e-6)
    # Untouched items keep their vectors; the repriced one gets its new price (its vector moves as
    # far as the trained content weight a mixes content into a trained item).
    untouched = ~old_items["item_id"].isin(upd["item_id"]).to_numpy()
    assert np.allclose(vec[1:len(old_items) + 1][untouched], old_vec[1:][untouched], atol=1e-5)
    row = int(np.flatnonzero(old_items["item_id"] == upd["item_id"][3])[0]) + 1
    assert torch.allclose(model.item_numeric[row], encode_content(mc, upd.iloc[3:4])[2][0])
    assert not np.array_equal(vec[row], old_vec[row])
    # The scripted model takes new items in a history (content-only inputs).
    taste = model(*model.pad([[len(items), len(items) - 1, 1]], [[]]))
    assert torch.allclose(taste.norm(dim=1), torch.ones(1), atol=1e-5)


def test_new_export_loads_in_the_handler_catalogue(content_export, tmp_path):
    from handler import seqrec_artifact, seqrec_catalogue
    old_items = pd.read_parquet(content_export / "items.parquet")
    rebuild(content_export, update_table(old_items), tmp_path / "v2", "1.1")
    meta = seqrec_artifact.verify_export(tmp_path / "v2")
    cat = seqrec_catalogue.Catalogue.load(tmp_path / "v2", meta, torch.device("cpu"))
    idx = cat.lookup([555001, int(update_table(old_items)["item_id"][2])])
    assert idx[0] == len(old_items) + 1
    assert cat.positions(torch.as_tensor(idx)).tolist()[0] >= 0 and cat.positions(torch.as_tensor(idx)).tolist()[1] == -1


def test_snapshot_marks_absent_items_unavailable(content_export, tmp_path):
    old_items = pd.read_parquet(content_export / "items.parquet")
    live = old_items[old_items["available"]].head(5)[["item_id", "category", "price"]]
    rec = rebuild(content_export, live, tmp_path / "snap", "1.2", snapshot=True)
    items = pd.read_parquet(tmp_path / "snap" / "items.parquet")
    assert items["available"].sum() == 5 and rec["available_items"] == 5
    assert set(items.loc[items["available"], "item_id"]) == set(live["item_id"])


def test_id_only_model_cannot_add_items_but_can_mark_sold(tmp_path):
    src = export(tmp_path / "ids")
    old_items = pd.read_parquet(src / "items.parquet")
    rec = rebuild(src, update_table(old_items), tmp_path / "v2", "1.1")
    assert rec["added"] == 0 and rec["skipped_new_items_without_content_model"] == 2
    items = pd.read_parquet(tmp_path / "v2" / "items.parquet")
    assert len(items) == len(old_items) and not items.loc[items["item_id"] == update_table(old_items)["item_id"][2], "available"].item()
    assert (tmp_path / "v2" / "model.pt").read_bytes() == (src / "model.pt").read_bytes()


def test_bad_updates_fail_loudly(content_export, tmp_path):
    with pytest.raises(ValueError, match="new directory"):
        rebuild(content_export, pd.DataFrame({"item_id": [1]}), content_export, "9")
    with pytest.raises(ValueError, match="integers"):
        rebuild(content_export, pd.DataFrame({"item_id": ["sku-1"]}), tmp_path / "x", "9")
    with pytest.raises(ValueError, match="item_id"):
        rebuild(content_export, pd.DataFrame({"id": [1]}), tmp_path / "y", "9")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in content_export.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    np.save(broken / "item_vectors.npy", np.zeros((3, 8), np.float32))
    with pytest.raises(ExportError, match="sha256 mismatch for item_vectors.npy"):
        rebuild(broken, pd.DataFrame({"item_id": [1]}), tmp_path / "z", "9")


@pytest.fixture(scope="module")
def indexed_export(tmp_path_factory):
    cfg = TrainConfig.from_dict({**TINY, "version": "1.0", "index": "hnsw:M=8,ef_construction=40,ef_search=64",
                                 "model": {**TINY["model"], "use_content": True}})
    out = tmp_path_factory.mktemp("indexed")
    run(cfg, out)
    return out


def test_rebuild_adds_new_listings_to_the_index_and_filters_sold_ones(indexed_export, tmp_path):
    from devtools.fuzz_oracle import Catalog, FuzzCase, check_answer
    from handler.seqrec_index import CandidateIndex
    from handler_fixtures import load_handler, run_batch

    base = json.loads((indexed_export / "metadata.json").read_text())["index"]
    assert base["kind"] == "hnsw" and base["entries"] == base["live"]
    old_items = pd.read_parquet(indexed_export / "items.parquet")
    upd = update_table(old_items)
    rec = rebuild(indexed_export, upd, tmp_path / "v2", "1.1")
    meta = verify_export(tmp_path / "v2")  # the new index is listed with its sha256
    info = meta["index"]
    old_vec, vec = np.load(indexed_export / "item_vectors.npy"), np.load(tmp_path / "v2" / "item_vectors.npy")
    moved = int((np.abs(vec[1:len(old_vec)] - old_vec[1:]).max(axis=1) > 1e-6)[old_items["available"].to_numpy()
                                                                              & (old_items["item_id"] != upd["item_id"][2]).to_numpy()].sum())
    assert rec["index"] == info and not info["rebuilt"]
    assert info["entries"] == base["entries"] + 2 + moved and info["live"] == base["live"] + 1  # +2 new, -1 sold
    index = CandidateIndex.load(tmp_path / "v2", meta)
    new_rows = np.arange(len(old_items) + 1, len(old_items) + 3)
    assert all(row in found for row, found in zip(new_rows, index.search(vec[new_rows], 5)))
    # The sold item is still in the graph, and never served: every answer obeys the contract.
    h, ctx = load_handler(tmp_path / "v2")
    assert h.index is not None
    cat = Catalog.from_export(tmp_path / "v2")
    bodies = [{"history": [int(x)], "k": 30} for x in old_items["item_id"][:20]]
    for body, out in zip(bodies, run_batch(h, ctx, bodies)):
        case = FuzzCase("valid/catalog", json.dumps(body).encode(), request=body)
        assert check_answer(case, 200, json.loads(out), cat) is None


def test_rebuild_starts_a_fresh_index_when_most_of_it_is_dead(indexed_export, tmp_path):
    old_items = pd.read_parquet(indexed_export / "items.parquet")
    live = old_items[old_items["available"]].head(5)[["item_id", "category", "price"]]
    rec = rebuild(indexed_export, live, tmp_path / "snap", "1.2", snapshot=True)
    assert rec["index"]["rebuilt"] and rec["index"]["entries"] == rec["index"]["live"] == 5
