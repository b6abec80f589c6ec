"""End to end on the embedded synthetic marketplace: train, evaluate, export, resume."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from train.config import TrainConfig
from train.export import sha256_file
from train.pipeline import run

SMALL = dict(data="synthetic", synthetic_users=600, synthetic_items=300, epochs=3, batch_size=64, lr=0.005,
             sample_size=256, model={"embedding_dim": 16, "hidden_dim": 32, "total_length": 20})


def small(**kw) -> TrainConfig:
    d = {**SMALL, **kw}
    return TrainConfig.from_dict(d)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    summary = run(small(epochs=8, version="t1"), out)
    return out, summary


def test_export_directory_is_complete_and_checksummed(trained):
    out, summary = trained
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model_version"] == "t1" and meta["item_id_type"] == "int"
    for name, digest in meta["files"].items():
        assert sha256_file(out / name) == digest
    vec = np.load(out / "item_vectors.npy", allow_pickle=False)
    items = pd.read_parquet(out / "items.parquet")
    assert vec.shape == (meta["num_items"] + 1, 16) and len(items) == meta["num_items"]
    assert np.allclose(np.linalg.norm(vec[1:], axis=1), 1, atol=1e-4) and not vec[0].any()
    assert {"item_id", "popularity", "available", "category", "price"} <= set(items.columns)
    assert (out / "train" / "training.png").stat().st_size > 1000


def test_summary_reports_counts_speed_and_curve(trained):
    _, s = trained
    assert s["data"]["events"] > 0 and "dropped" in s["data"] and s["data"]["split"]["users_evaluated"] > 0
    assert s["events_per_s"] > 0 and len(s["history"]) == s["epochs"]
    assert all("valid_NDCG@10" in e for e in s["history"])
    assert set(s["test"]) == {"model", "popularity"}


def test_model_beats_popularity_on_planted_sequences(trained):
    _, s = trained
    assert s["test"]["model"]["HR@10"] > 1.5 * s["test"]["popularity"]["HR@10"]


def test_scripted_export_ranks_like_training(trained):
    out, _ = trained
    m = torch.jit.load(str(out / "model.pt"))
    vec = torch.from_numpy(np.load(out / "item_vectors.npy"))
    items, feats, lengths = m.pad([[1, 2, 3]], [[]])
    q = m(items, feats, lengths)
    assert torch.allclose(vec, m.item_matrix(), atol=1e-6)
    assert q.shape == (1, 16)


def test_resume_gives_the_same_model_as_an_uninterrupted_run(tmp_path):
    run(small(epochs=3, patience=10), tmp_path / "a")
    run(small(epochs=2, patience=10), tmp_path / "b")          # "killed" after epoch 2
    run(small(epochs=3, patience=10), tmp_path / "b")          # resumes at epoch 3
    a = np.load(tmp_path / "a" / "item_vectors.npy")
    b = np.load(tmp_path / "b" / "item_vectors.npy")
    assert np.array_equal(a, b)


def test_unknown_config_key_fails_loudly():
    with pytest.raises(ValueError, match="epochz"):
        TrainConfig().override(["epochz=3"])
