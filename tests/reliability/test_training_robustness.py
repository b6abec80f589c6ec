"""Training on a dirty event log, and a training run killed mid-epoch (a real SIGKILL).

    .venv/bin/python -m pytest -q tests/reliability/test_training_robustness.py

Dirty log: corrupt rows of every kind, exact duplicates, rows out of time order and columns the
pipeline does not know; training must finish and the summary must count every dropped row under
its reason, exactly. Kill: `python -m train` is SIGKILLed during epoch 2 (after epoch 1's
checkpoint, before epoch 2's), rerun with the same command, and must export the same item vectors,
bit for bit, as a run that was never interrupted (same seed).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from train.config import TrainConfig
from train.pipeline import run
from train.synthetic import generate_marketplace

pytestmark = pytest.mark.training

ROOT = Path(__file__).resolve().parents[2]
SMALL_MODEL = {"embedding_dim": 16, "hidden_dim": 32, "total_length": 20}


def dirty_log(path: Path, seed: int = 0):
    """A CSV event log with planted problems -> (path, expected drop counts, clean row count)."""
    rng = np.random.default_rng(seed)
    events, _ = generate_marketplace(n_users=300, n_items=200, seed=seed)
    events = events.assign(colour=rng.choice(["red", "blue", ""], len(events)),  # unknown columns
                           session_blob=[f"s{i};x=1,y=2" for i in range(len(events))])
    clean = len(events)
    dups = events.sample(40, random_state=seed)                        # exact repeats of real events
    bad = events.sample(60, random_state=seed + 1).copy()
    bad["user_id"] = bad["user_id"].astype(object)
    bad["item_id"] = bad["item_id"].astype(object)
    bad["timestamp"] = bad["timestamp"].astype(object)
    bad.iloc[0:12, bad.columns.get_loc("user_id")] = ""               # null user
    bad.iloc[12:20, bad.columns.get_loc("user_id")] = "   "           # blank user
    bad.iloc[20:35, bad.columns.get_loc("item_id")] = ""              # null item
    ts = ["not-a-time", "", "NaN", "inf", "-inf", "2024-13-45T99:00:00", "1e999", "yesterday", "0x1F", "12:61"]
    bad.iloc[35:60, bad.columns.get_loc("timestamp")] = [ts[i % len(ts)] for i in range(25)]
    log = pd.concat([events, dups, bad]).sample(frac=1.0, random_state=seed)  # out of time order
    text = log.to_csv(index=False)
    lines = text.splitlines()
    # Malformed lines: more fields than the header (a stray comma, a pasted row, a broken export).
    extra = [lines[i] + ",oops" for i in rng.choice(np.arange(1, len(lines)), 7, replace=False)]
    extra += ["1,2,3,4,5,6,7,8,9,10", "\x00\x00,\x01,,,,,,,,,"]
    lines[1:1] = extra[:3]
    lines.extend(extra[3:])
    path.write_text("\n".join(lines) + "\n")
    expected = {"rows_read": len(log) + len(extra), "null_user": 20, "null_item": 15,
                "unparsable_timestamp": 25, "duplicates": 40, "extra": {"malformed_line": len(extra)}}
    expected["total_dropped"] = 20 + 15 + 25 + 40 + len(extra)
    return path, expected, clean


def test_dirty_event_log_trains_with_every_drop_counted(tmp_path):
    path, expected, clean = dirty_log(tmp_path / "events.csv")
    cfg = TrainConfig.from_dict({"data": str(path), "epochs": 1, "batch_size": 64, "sample_size": 128,
                                 "num_threads": 1, "model": SMALL_MODEL})
    summary = run(cfg, tmp_path / "export")
    assert summary["data"]["dropped"] == expected
    assert summary["data"]["events"] == clean == expected["rows_read"] - expected["total_dropped"]
    saved = json.loads((tmp_path / "export" / "train" / "summary.json").read_text())
    assert saved["data"]["dropped"] == expected  # and written down with the export
    meta = json.loads((tmp_path / "export" / "metadata.json").read_text())
    assert meta["data_summary"]["dropped"] == expected


# ---- a real SIGKILL mid-epoch
TRAIN = ["--data", "synthetic", "--epochs", "3", "--set", "synthetic_users=1500", "synthetic_items=400",
         "batch_size=32", "sample_size=256", "num_threads=1", "seed=7", "patience=10",
         f"model={json.dumps(SMALL_MODEL)}"]


def _train(out: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "train", "--out", str(out), *TRAIN], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))


def test_killed_mid_epoch_resumes_to_the_same_model(tmp_path):
    whole = _train(tmp_path / "whole", tmp_path / "whole.log")
    killed = _train(tmp_path / "killed", tmp_path / "killed.log")
    ckpt = tmp_path / "killed" / "train" / "checkpoint.pt"
    try:
        deadline = time.monotonic() + 240
        while not ckpt.exists():  # epoch 1 done and checkpointed: epoch 2 is running
            assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "epoch 1 never finished"
            time.sleep(0.05)
        epoch1 = re.search(r"epoch 1: .*'seconds': ([0-9.]+)", (tmp_path / "killed.log").read_text())
        time.sleep(0.4 * float(epoch1.group(1)))  # well inside epoch 2
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(30) == -signal.SIGKILL
    finally:
        if killed.poll() is None:
            killed.kill()
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 0, "the kill landed after epoch 2 finished: not mid-epoch"
    assert not (tmp_path / "killed" / "metadata.json").exists()

    resumed = _train(tmp_path / "killed", tmp_path / "resumed.log")  # the same command again
    assert resumed.wait(300) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert whole.wait(300) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    assert "resumed from" in (tmp_path / "resumed.log").read_text()
    a = np.load(tmp_path / "whole" / "item_vectors.npy")
    b = np.load(tmp_path / "killed" / "item_vectors.npy")
    assert np.array_equal(a, b), f"max |diff| {np.abs(a - b).max()}"
    sa = json.loads((tmp_path / "whole" / "train" / "summary.json").read_text())
    sb = json.loads((tmp_path / "killed" / "train" / "summary.json").read_text())
    assert sa["test"] == sb["test"] and sa["epochs"] == sb["epochs"] == 3
