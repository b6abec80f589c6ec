"""The training loop is DDP-ready: two gloo processes under torchrun train and export."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.training

ROOT = Path(__file__).resolve().parent.parent


def test_torchrun_two_processes(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2",
           "-m", "train", "--data", "synthetic", "--out", str(tmp_path / "ddp"), "--epochs", "2", "--fresh",
           "--set", "synthetic_users=300", "synthetic_items=200", "model.hidden_dim=16", "model.embedding_dim=8"]
    # Own process group, so a hang kills torchrun *and* its workers, nothing else.
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        _, err = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    assert p.returncode == 0, err[-3000:]
    summary = json.loads((tmp_path / "ddp" / "train" / "summary.json").read_text())
    assert summary["epochs"] == 2 and (tmp_path / "ddp" / "model.pt").exists()
