"""End to end on the embedded synthetic marketplace: train, evaluate, export, resume."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from handler.seqrec_artifact import sha256_file
from train.config import TrainConfig
from train.pipeline import build_model, forget_untrained, prepare, run
from train.sequences import encode_cases

SMALL = dict(data="synthetic", synthetic_users=600, synthetic_items=300, epochs=3, batch_size=64, lr=0.005,
             sample_size=256, model={"embedding_dim": 16, "hidden_dim": 32, "total_length": 20})


def small(**kw) -> TrainConfig:
    d = {**SMALL, **kw}
    return TrainConfig.from_dict(d)


# The trained fixture's model also reads time and event context, so that the scripted export's
# encode_events is compared with training's too.
CONTEXT = {**SMALL["model"], "use_time": True, "use_event_type": True, "use_source": True}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    summary = run(small(epochs=8, version="t1", model=CONTEXT), out)
    return out, summary


def eager_as_trained(out, summary):
    """(model, prepared data): the eager model training produced, rebuilt from the run's resolved
    config and given the best weights of the checkpoint it left, and the data it was trained on."""
    cfg = TrainConfig.from_dict(summary["config"])
    prep = prepare(cfg)
    model = build_model(cfg, prep)
    model.load_state_dict(torch.load(out / "train" / "checkpoint.pt", weights_only=True)["best_model"])
    forget_untrained(model, prep.popularity)  # as run() does before evaluating and exporting
    return model.eval(), prep


def top10(queries: torch.Tensor, matrix: torch.Tensor, histories):
    """Best 10 items by cosine, padding and the history's own items excluded (as served)."""
    scores = queries @ matrix.T
    scores[:, 0] = float("-inf")
    for row, seen in enumerate(histories):
        scores[row, seen] = float("-inf")
    return torch.topk(scores, 10, dim=1)


@pytest.mark.training
def test_export_directory_is_complete_and_checksummed(trained):
    out, summary = trained
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model_version"] == "t1" and meta["item_id_type"] == "int"
    for name, digest in meta["files"].items():
        assert sha256_file(out / name) == digest
    vec = np.load(out / "item_vectors.npy", allow_pickle=False)
    items = pd.read_parquet(out / "items.parquet")
    assert vec.shape == (meta["num_items"] + 1, 16) and len(items) == meta["num_items"]
    # Unit rows, but zero ones for items without a training event (popularity 0, forget_untrained).
    trained = items["popularity"].to_numpy() > 0
    assert np.allclose(np.linalg.norm(vec[1:], axis=1), trained, atol=1e-4) and not vec[0].any()
    assert {"item_id", "popularity", "available", "category", "price"} <= set(items.columns)
    assert (out / "train" / "training.png").stat().st_size > 1000


@pytest.mark.training
def test_items_without_a_training_event_are_zero_rows_in_evaluation_and_export(tmp_path):
    # Leave-one-out on a catalogue larger than its events: some items occur only as validation or
    # test events, never in training. Their random initial vectors must not reach a history's input.
    summary = run(small(epochs=1, synthetic_users=200, synthetic_items=400), tmp_path)
    items = pd.read_parquet(tmp_path / "items.parquet")
    vec = np.load(tmp_path / "item_vectors.npy")
    untrained = items["popularity"].to_numpy() == 0
    assert untrained.any() and summary["data"]["items_without_training_event"] == untrained.sum()
    assert not vec[1:][untrained].any() and np.linalg.norm(vec[1:][~untrained], axis=1).min() > 0.99
    model = build_model(small(), prepare(small()))
    pop = np.array([0, 3, 0, 1] + [1] * (model.num_id_items - 3))
    assert forget_untrained(model, pop) == 1  # row 0 is padding, already zero
    assert not model.item_embedding.weight[2].any() and model.item_embedding.weight[1].any()


@pytest.mark.training
def test_summary_reports_counts_speed_and_curve(trained):
    _, s = trained
    assert s["data"]["events"] > 0 and "dropped" in s["data"] and s["data"]["split"]["users_evaluated"] > 0
    (f,) = s["fits"]  # no refit: one fit, the exported one, and the whole run is that fit
    assert f["name"] == s["exported"] == "early_stopped" and f["test"] == s["test"]
    assert s["events_per_s"] > 0 and len(f["validation_curve"]) == f["epochs"] == s["epochs"]
    assert all("valid_NDCG@10" in e and e["validation_seconds"] > 0 for e in f["validation_curve"])
    assert f["seconds_to_best"] == pytest.approx(sum(e["seconds"] for e in f["validation_curve"][:f["best_epoch"]]))
    assert s["train_seconds"] == f["train_seconds"] < f["wall_seconds"] < s["wall_seconds"]
    assert s["history"] == f["validation_curve"] and s["best_epoch"] == f["best_epoch"]
    assert set(s["test"]) == {"model", "popularity", "model_train_part_removed"}  # loo: both filters


@pytest.mark.training
def test_a_refit_run_reports_every_fit_and_reruns_to_the_same_epochs(tmp_path):
    # patience 1 on a small log: validation decides where it stops, seed and data alone.
    cfg = small(epochs=6, patience=1, refit_on_validation=True, synthetic_users=300, synthetic_items=150)
    a, b = run(cfg, tmp_path / "a"), run(cfg, tmp_path / "b")
    first, refit = a["fits"]
    assert (first["name"], first["trained_on"], refit["name"], refit["trained_on"]) == \
        ("early_stopped", "train", "refit", "train+validation")
    assert refit["epochs"] == first["best_epoch"] and "valid_NDCG@10" not in refit["validation_curve"][0]
    assert refit["training_events"] > first["training_events"]
    assert a["exported"] == "refit" and a["test"] == refit["test"] != first["test"]
    # The top level is the whole run, not the refit alone.
    assert a["epochs"] == first["epochs"] + refit["epochs"]
    assert a["train_seconds"] == pytest.approx(first["train_seconds"] + refit["train_seconds"])
    events = first["events_seen"] + refit["events_seen"]
    assert a["events_per_s"] == pytest.approx(events / a["train_seconds"])
    assert a["wall_seconds"] > first["wall_seconds"] + refit["wall_seconds"]
    assert a["history"] == first["validation_curve"] and a["best_epoch"] == first["best_epoch"]
    for fa, fb in zip(a["fits"], b["fits"]):  # no wall clock in the decision
        assert (fa["epochs"], fa["best_epoch"], fa["test"]) == (fb["epochs"], fb["best_epoch"], fb["test"])


@pytest.mark.training
def test_model_beats_popularity_on_planted_sequences(trained):
    _, s = trained
    assert s["test"]["model"]["HR@10"] > 1.5 * s["test"]["popularity"]["HR@10"]


@pytest.mark.training
def test_scripted_export_ranks_like_training(trained):
    """model.pt and item_vectors.npy, used as the handler uses them (the model's own
    encode_events and pad on raw histories), give real test users the eager model's top-10."""
    out, summary = trained
    eager, prep = eager_as_trained(out, summary)
    scripted = torch.jit.load(str(out / "model.pt"))
    vectors = torch.from_numpy(np.load(out / "item_vectors.npy"))
    cases, c = prep.split.test.subset(60, seed=1), prep.cols
    seqs = [c.items[h].tolist() for h in cases.histories]
    feats = [scripted.encode_events(c.timestamps[h].tolist(), c.event_types[h].tolist(), c.sources[h].tolist(),
                                    c.strengths[h].tolist(), float(now)) for h, now in zip(cases.histories, cases.now)]
    assert len({len(s) for s in seqs}) > 5 and any(any(row) for f in feats for row in f)  # varied, real features
    with torch.no_grad():
        served = top10(scripted(*scripted.pad(seqs, feats)), vectors, seqs)
        expected = top10(eager(*encode_cases(eager, c, cases)), eager.item_matrix(), seqs)
    assert torch.equal(served.indices, expected.indices)
    assert torch.allclose(served.values, expected.values, atol=1e-5)
    assert torch.allclose(vectors, eager.item_matrix(), atol=1e-6)


@pytest.mark.training
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


@pytest.mark.training
def test_strength_trains_exports_and_encodes_like_training(tmp_path):
    """A CSV log with a rating column: edges from the training events' distinct values, a
    missing rating is "unknown", and the export encodes events the same way."""
    rng = np.random.default_rng(0)
    n_users, per_user = 120, 8
    log = pd.DataFrame({"user_id": np.repeat(np.arange(n_users), per_user),
                        "item_id": rng.integers(1, 60, n_users * per_user),
                        "timestamp": np.tile(np.arange(per_user) * 60.0, n_users),
                        "strength": rng.choice([1.0, 2.0, 3.5, 5.0, np.nan], n_users * per_user)})
    log.to_csv(tmp_path / "log.csv", index=False)
    cfg = small(data=str(tmp_path / "log.csv"), epochs=1).override(["model.use_strength=true"])
    summary = run(cfg, tmp_path / "out")
    assert summary["config"]["model"]["strength_edges"] == [2.0, 3.5, 5.0]
    m = torch.jit.load(str(tmp_path / "out" / "model.pt"))
    rows = m.encode_events([0.0] * 4, [""] * 4, [""] * 4, [float("nan"), 1.0, 3.5, 9.0], 0.0)
    assert [r[4] for r in rows] == [1, 2, 4, 5]


def test_switched_on_feature_without_its_column_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="model.use_strength: 'synthetic' has no 'strength' column"):
        run(small(epochs=1).override(["model.use_strength=true"]), tmp_path / "out")


def test_strength_edges_are_distinct_values_or_quantiles():
    from train.pipeline import strength_edges
    assert strength_edges(np.array([0.5, 5.0, 3.0, np.nan, 3.0]), 16) == [3.0, 5.0]
    edges = strength_edges(np.arange(1000.0), 4)
    assert edges == pytest.approx([249.75, 499.5, 749.25])
    with pytest.raises(ValueError, match="no training event has a numeric strength"):
        strength_edges(np.array([np.nan]), 4)
