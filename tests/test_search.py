"""bench/search.py on a small synthetic marketplace: trials are scored on validation only, the
study resumes from its storage, and the best trial's config is a loadable recipe."""
import json

import pytest

import bench.search as search  # noqa: E402
from train.config import load_config

pytestmark = pytest.mark.training


def test_search_scores_validation_only_and_resumes(tmp_path, monkeypatch):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"data": "synthetic", "synthetic_users": 300, "synthetic_items": 200,
                                "epochs": 2, "patience": 1, "refit_on_validation": True, "num_threads": 1}))
    encoded = []
    real_encode = search.encode_cases
    monkeypatch.setattr(search, "encode_cases", lambda model, cols, cases: encoded.append(cases) or
                        real_encode(model, cols, cases))
    args = ["--config", str(base), "--storage", f"sqlite:///{tmp_path / 's.db'}", "--out", str(tmp_path / "t.json"),
            "--best-config", str(tmp_path / "best.json"), "--trials", "2"]
    assert search.main(args) == 0
    assert search.main(args) == 0  # the same study: two more
    out = json.loads((tmp_path / "t.json").read_text())
    assert [t["number"] for t in out["trials"]] == [0, 1, 2, 3]
    done = [t for t in out["trials"] if t["state"] == "COMPLETE"]
    assert done and all(0 <= t["value"] <= 1 and t["valid_NDCG@10"] == t["value"] for t in done)
    assert out["best"]["value"] == max(t["value"] for t in done)
    first = out["trials"][0]["params"]  # a new study starts from the recipe as given
    assert first == search.base_params(load_config(str(base), []))
    prep = search.prepare(load_config(str(base), []))
    assert len(encoded) == 4  # one validation sample a trial, never the test cases
    assert all((c.targets == prep.split.valid.targets).all() for c in encoded)
    best = load_config(str(tmp_path / "best.json"), [])
    assert best.refit_on_validation  # the recipe as given, with the best trial's values
    assert best.lr == pytest.approx(out["best"]["params"]["lr"])
    assert best.model.hidden_dim == out["best"]["params"]["model.hidden_dim"]


def test_enqueued_trials_run_as_picked(tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"data": "synthetic", "synthetic_users": 200, "synthetic_items": 150,
                                "epochs": 1, "num_threads": 1}))
    args = ["--config", str(base), "--storage", f"sqlite:///{tmp_path / 's.db'}", "--out", str(tmp_path / "t.json"),
            "--trials", "2", "--enqueue", "model.dropout=0.5,negatives=\"popularity\""]
    assert search.main(args) == 0
    first, picked = json.loads((tmp_path / "t.json").read_text())["trials"]
    assert first["picked"] == "the recipe"
    assert picked["picked"] == 'model.dropout=0.5,negatives="popularity"'
    assert picked["params"] == {**first["params"], "model.dropout": 0.5, "negatives": "popularity"}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        search.main(args[:-1] + ["dropout"])


def test_enqueue_values_are_json_or_bare_words():
    assert search._parse_picked("model.dropout=0.5,negatives=popularity,negatives2=\"uniform\"") == \
        {"model.dropout": 0.5, "negatives": "popularity", "negatives2": "uniform"}


def test_seeds_train_a_trial_several_times_on_one_validation_sample(tmp_path, monkeypatch):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"data": "synthetic", "synthetic_users": 300, "synthetic_items": 200,
                                "epochs": 2, "patience": 1, "max_eval_users": 100, "seed": 3, "num_threads": 1}))
    encoded = []
    real_encode = search.encode_cases
    monkeypatch.setattr(search, "encode_cases", lambda model, cols, cases: encoded.append(cases) or
                        real_encode(model, cols, cases))
    args = ["--config", str(base), "--storage", f"sqlite:///{tmp_path / 's.db'}", "--out", str(tmp_path / "t.json"),
            "--trials", "1", "--seeds", "2"]
    assert search.main(args) == 0
    out = json.loads((tmp_path / "t.json").read_text())
    assert out["this_run"]["training_seeds"] == [3, 4] and out["validation_sample_seed"] == 3
    (trial,) = out["trials"]
    per_seed = trial["per_seed"]
    assert [r["seed"] for r in per_seed] == [3, 4]
    assert trial["training_seeds"] == [3, 4]
    assert trial["value"] == pytest.approx(sum(r["valid_NDCG@10"] for r in per_seed) / 2)
    assert trial["valid_NDCG@10"] == trial["value"]
    # Both seeds are scored on the same 100 validation users, those a one-seed trial would use.
    assert len(encoded) == 2 and (encoded[0].users == encoded[1].users).all()
    prep = search.prepare(load_config(str(base), []))
    assert (encoded[0].users == prep.split.valid.subset(100, 3).users).all()
    assert len(encoded[0].users) == 100


def test_suggest_never_draws_a_combination_the_configs_refuse():
    # position_temperature with item_bias, or a logQ choice without popularity negatives, would
    # raise a ConfigError inside the trial and end the whole study.
    import optuna
    from train.config import TrainConfig
    base = TrainConfig(negatives="popularity")
    common = {"model.embedding_dim": 64, "model.hidden_dim": 64, "model.num_layers": 1,
              "model.lstm_bias": False, "model.residual": False, "model.attention": False,
              "model.dropout": 0.1, "model.item_input_dropout": 0.0, "model.init_scale": 10.0, "model.learn_temperature": True,
              "lr": 1e-3, "lr_decay": 1.0, "batch_size": 64, "sample_size": 1024,
              "pretrained": "svd", "svd_window": 5}
    cfg = search.suggest(optuna.trial.FixedTrial({**common, "model.position_temperature": True, "model.item_bias": True,
                                                  "negatives": "uniform", "logq_correction": "inclusion"}), base)
    assert cfg.model.position_temperature and not cfg.model.item_bias and cfg.logq_correction == "draw"
    cfg = search.suggest(optuna.trial.FixedTrial({**common, "model.position_temperature": False, "model.item_bias": True,
                                                  "negatives": "popularity", "logq_correction": "inclusion"}), base)
    assert cfg.model.item_bias and cfg.logq_correction == "inclusion"
    # The full softmax samples nothing: drawn with popularity negatives, it runs as uniform.
    cfg = search.suggest(optuna.trial.FixedTrial({**common, "sample_size": 0, "model.position_temperature": False,
                                                  "model.item_bias": False, "negatives": "popularity",
                                                  "logq_correction": "inclusion"}), base)
    assert cfg.sample_size == 0 and cfg.negatives == "uniform" and cfg.logq_correction == "draw"
    assert cfg.pretrained == "svd" and cfg.svd_window == 5
    # A file of item vectors is the data's: drawing "svd" does not replace it.
    fixed = {**common, "model.position_temperature": False, "model.item_bias": False, "negatives": "uniform",
             "logq_correction": "draw"}
    assert search.suggest(optuna.trial.FixedTrial(fixed), TrainConfig(pretrained="v.npy")).pretrained == "v.npy"


def test_a_trial_stopped_midway_keeps_its_curve_in_the_results(tmp_path):
    # A trial killed by hand stays RUNNING in the storage; --trials 0 rewrites the JSON from it.
    import optuna
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"data": "synthetic", "synthetic_users": 200, "synthetic_items": 150,
                                "epochs": 1, "num_threads": 1}))
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="stopped", storage=storage, direction="maximize")
    trial = study.ask()
    trial.report(0.01, 1)
    trial.report(0.02, 2)
    args = ["--config", str(base), "--storage", storage, "--study", "stopped", "--out", str(tmp_path / "t.json"),
            "--trials", "0"]
    assert search.main(args) == 0
    (row,) = json.loads((tmp_path / "t.json").read_text())["trials"]
    assert row["state"] == "RUNNING" and row["reported_valid_curve"] == [0.01, 0.02]
