"""The training loop is DDP-ready: two gloo processes under torchrun train and export."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_torchrun_two_processes(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--nproc_per_node", "2", "--standalone",
           "-m", "train", "--data", "synthetic", "--out", str(tmp_path / "ddp"), "--epochs", "2", "--fresh",
           "--set", "synthetic_users=300", "synthetic_items=200", "model.hidden_dim=16", "model.embedding_dim=8"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "train" / "summary.json").read_text())
    assert summary["epochs"] == 2 and (tmp_path / "ddp" / "model.pt").exists()
