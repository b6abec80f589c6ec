"""`python -m train` as a new user meets it: a mistake in what was asked (a config value, an unknown
key, a missing or unreadable file, a missing column, data with nothing to evaluate, a checkpoint
of another config) exits with 2 and one line `python -m train: error: ...`, never a traceback.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_cli.py

Every mistake is found before the first epoch; the checkpoint tests train one tiny epoch once.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from train.config import TrainConfig
from train.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "python -m train: error: "
TINY = ["--data", "synthetic", "--set", "synthetic_users=200", "synthetic_items=100", "epochs=1",
        "batch_size=64", "sample_size=64", "num_threads=1", "model.embedding_dim=8", "model.hidden_dim=8"]


def train_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def user_error(proc: subprocess.CompletedProcess) -> str:
    """The one error line of a run that failed on a user mistake (asserting that it did)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(PREFIX)]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert proc.stderr.rstrip().endswith(lines[0])  # the last word, after any log lines
    return lines[0][len(PREFIX):]


def write_csv(path: Path, rows) -> str:
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


@pytest.mark.training  # the lane guard counts every `python -m train` as training
@pytest.mark.parametrize("override, expected", [
    ("epochs=-1", "epochs must be an integer >= 1, got -1"),
    ("epochs=abc", "epochs must be an integer >= 1, got 'abc'"),
    ("model.embedding_dim=0", "model.embedding_dim must be an integer >= 1, got 0"),
    ("model.hidden_size=3", "model.hidden_size is not a config key (did you mean 'hidden_dim'?)"),
])
def test_a_bad_config_value_is_one_line_naming_the_key(tmp_path, override, expected):
    assert user_error(train_cli("--out", str(tmp_path / "out"), "--set", override)) == expected
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize("overrides, expected", [
    (["model.dropout=1.5"], "model.dropout must be a finite number in [0, 1), got 1.5"),
    (["lr=NaN"], "lr must be a finite number > 0, got nan"),
    (["temporal_cut=1"], "temporal_cut must be a finite number in (0, 1), got 1"),
    (["split=random"], "split must be one of 'loo', 'temporal', got 'random'"),
    (["model.use_time=1"], "model.use_time must be true or false, got 1"),
    (["model.event_types=[1]"], "model.event_types must be a list of strings, got [1]"),
    (["model.strength_edges=[3, 1]"], "model.strength_edges must be ascending, got [3, 1]"),
    (["refit_on_validation=true", "split=temporal"], "refit_on_validation needs split='loo', got split='temporal'"),
    (["model=3"], "model must be an object of model keys, got 3"),
    (["foo.bar=1"], "foo.bar: 'foo' is not a config section (the only one is 'model')"),
])
def test_every_kind_of_rule_names_the_key_and_what_it_allows(overrides, expected):
    with pytest.raises(UserError) as e:
        TrainConfig().override(overrides)
    assert str(e.value) == expected


def test_a_string_field_takes_the_text_and_an_int_becomes_a_float():
    cfg = TrainConfig().override(["version=2.0", "lr=1"])
    assert cfg.version == "2.0" and cfg.lr == 1.0 and isinstance(cfg.lr, float)


@pytest.mark.training
def test_missing_files_are_named(tmp_path):
    msg = user_error(train_cli("--out", str(tmp_path / "o"), "--config", str(tmp_path / "nope.json")))
    assert msg == f"--config: no such file {str(tmp_path / 'nope.json')!r}"
    msg = user_error(train_cli("--out", str(tmp_path / "o"), "--data", str(tmp_path / "nope.csv")))
    assert msg.startswith(f"data: {str(tmp_path / 'nope.csv')!r} is not 'synthetic', a bundled dataset")
    (tmp_path / "bad.json").write_text('{"epochs": 3,}')
    msg = user_error(train_cli("--out", str(tmp_path / "o"), "--config", str(tmp_path / "bad.json")))
    assert msg.startswith(f"--config: {str(tmp_path / 'bad.json')!r} is not valid JSON")


@pytest.mark.training
def test_an_unreadable_event_log_or_a_missing_column_is_named(tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"\x00\x01 not parquet at all \xff" * 10)
    msg = user_error(train_cli("--out", str(tmp_path / "o"), "--data", str(junk)))
    assert msg.startswith(f"{junk}: cannot read the event log: ")
    log = write_csv(tmp_path / "log.csv", {"user_id": [1, 1, 1], "item_id": [1, 2, 3]})
    msg = user_error(train_cli("--out", str(tmp_path / "o"), "--data", log))
    assert msg.startswith(f"{log}: required column 'timestamp' (for timestamp) is missing")


@pytest.mark.training
def test_nothing_to_evaluate_fails_before_training_with_counts(tmp_path):
    log = write_csv(tmp_path / "short.csv", {"user_id": [1, 1, 2, 2, 3], "item_id": [1, 2, 2, 3, 1],
                                             "timestamp": [0, 60, 0, 60, 0]})
    msg = user_error(train_cli("--out", str(tmp_path / "o"), "--data", log))
    assert msg == ("nothing to evaluate: none of the 3 users (5 events) has the min_events=3 events that "
                   "split=loo needs for a validation and a test event (the longest history has 2); use a "
                   "log where users have 3 or more events, or split=temporal")
    long = write_csv(tmp_path / "long.csv", {"user_id": [1] * 4 + [2] * 3, "item_id": [1, 2, 3, 4, 1, 2, 3],
                                             "timestamp": [0, 60, 120, 180, 0, 60, 120]})
    msg = user_error(train_cli("--out", str(tmp_path / "o"), "--data", long, "--set", "min_events=5"))
    assert "(the longest history has 4); lower min_events (to 4 or less)" in msg
    # temporal: every event at one time, so no user has one before the test period and one in it
    same = write_csv(tmp_path / "same.csv", {"user_id": [1, 1, 2], "item_id": [1, 2, 3], "timestamp": [5, 5, 5]})
    msg = user_error(train_cli("--out", str(tmp_path / "o"), "--data", same, "--set", "split=temporal"))
    assert msg.startswith("nothing to evaluate: split=temporal with temporal_cut=0.9 leaves no validation "
                          "case among 2 users (3 events)")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny epoch, exported with its checkpoint."""
    out = tmp_path_factory.mktemp("cli") / "out"
    proc = train_cli("--out", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out.parent / "stdout.txt").write_text(proc.stdout)
    return out


@pytest.mark.training
def test_the_closing_lines_give_the_whole_run_and_test_figures_with_intervals(trained):
    lines = (trained.parent / "stdout.txt").read_text().strip().splitlines()
    s = json.loads((trained / "train" / "summary.json").read_text())
    assert lines[0] == (f"exported to {trained} (the early_stopped model); the run: 1 fit(s), 1 epochs, "
                        f"{s['train_seconds']:.0f} s training of {s['wall_seconds']:.0f} s wall, "
                        f"{s['events_per_s']:.0f} events/s")
    assert lines[1].split() == ["HR@10", "[95%", "CI]", "NDCG@10", "[95%", "CI]", "MRR@10"]
    assert lines[2].startswith("early_stopped: 1 epochs on train, best epoch 1 after ")
    for line, who in zip(lines[3:5], ("model", "popularity")):
        m = s["test"][who]
        want = [who] + [f"{m[k]:.4f} [{m[k + '_ci95'][0]:.4f}, {m[k + '_ci95'][1]:.4f}]".replace(",", "")
                        for k in ("HR@10", "NDCG@10")] + [f"{m['MRR@10']:.4f}"]
        assert " ".join(line.replace(",", "").split()) == " ".join(want)
    assert len(lines) == 5


@pytest.mark.training
def test_resuming_with_another_config_names_the_keys_that_differ(trained):
    ck = torch.load(trained / "train" / "checkpoint.pt", weights_only=True)
    assert ck["config"]["model"]["num_items"] > 0 and ck["config"]["epochs"] == 1  # the resolved config
    msg = user_error(train_cli("--out", str(trained), *TINY, "model.hidden_dim=16", "lr=0.01"))
    assert msg.startswith(f"{trained / 'train' / 'checkpoint.pt'} was trained with a different config: "
                          "lr: 0.001 in the checkpoint, 0.01 now; model.hidden_dim: 8 in the checkpoint, 16 now;")
    assert msg.endswith("rerun with the checkpoint's values, or with --fresh to start over")


@pytest.mark.training
def test_an_unchanged_rerun_or_more_epochs_resumes(trained):
    proc = train_cli("--out", str(trained), *TINY, "epochs=2", "--version", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "epoch 2:" in proc.stderr and "epoch 1:" not in proc.stderr


@pytest.mark.training
def test_a_checkpoint_without_its_config_asks_for_fresh(tmp_path, trained):
    ck_path = trained / "train" / "checkpoint.pt"
    ck = torch.load(ck_path, weights_only=True)
    del ck["config"]
    old = tmp_path / "old"
    (old / "train").mkdir(parents=True)
    torch.save(ck, old / "train" / "checkpoint.pt")
    msg = user_error(train_cli("--out", str(old), *TINY))
    assert msg == (f"{old / 'train' / 'checkpoint.pt'} was written without its config (by an older version), "
                   "so it cannot be checked against this run; rerun with --fresh to start over")
    proc = train_cli("--out", str(old), *TINY, "model.hidden_dim=16", "--fresh")
    assert proc.returncode == 0 and "resumed from" not in proc.stderr, proc.stderr[-3000:]
    assert json.loads((old / "metadata.json").read_text())["model_config"]["hidden_dim"] == 16


def test_every_shipped_config_loads():
    """train/configs/*.json, bench's quality and scale configs and every stage of bench's ablation
    configs (bench/configs also holds other benches' own settings, such as the peers')."""
    bench = ROOT / "bench" / "configs"
    paths = (sorted((ROOT / "train" / "configs").glob("*.json")) + sorted(bench.glob("quality-*.json"))
             + sorted(bench.glob("ablation-*.json")) + [bench / "scale.json"])
    assert len(paths) >= 6
    for path in paths:
        spec = json.loads(path.read_text())
        if "base" not in spec:
            TrainConfig.from_dict(spec)
            continue
        base = TrainConfig.from_dict(spec["base"])
        for overrides in spec["stages"].values():
            base.override(overrides)
