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
    for attempt in range(2):
        # Own process group, so a hang kills torchrun *and* its workers, nothing else.
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        try:
            _, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise
        # Known, not yet understood: about one run in four, a rank aborts at exit after both
        # epochs ("terminate called without an active exception", SIGABRT), since 2026-12-02.
        # One more run, for that signature only; any other failure fails at once.
        if p.returncode == 0 or "terminate called without an active exception" not in err or attempt:
            break
    assert p.returncode == 0, err[-3000:]
    summary = json.loads((tmp_path / "ddp" / "train" / "summary.json").read_text())
    assert summary["epochs"] == 2 and (tmp_path / "ddp" / "model.pt").exists()
    assert summary["config"]["item_optimizer"] == "sparse_adam"  # the default: a sparse all-reduce
    # Throughput counts both ranks' events: 2 epochs over all windows but the odd batch each epoch
    # leaves over (a third of this tiny data set) is more than one epoch's events; rank 0's alone
    # would be about half of that.
    seen = summary["events_per_s"] * summary["train_seconds"]
    assert summary["data"]["training_events"] < seen <= 2 * summary["data"]["training_events"] + 1


def _rank(rank: int, world: int, init: str, out: str, item_optimizer: str) -> None:
    """One DDP rank: fit on the tiny marketplace, then save this rank's weights."""
    import torch
    import torch.distributed as dist

    from train.config import TrainConfig
    from train.negatives import CandidateSampler
    from train.pipeline import build_model, exit_rank, prepare
    from train.sequences import SequentialDataset
    from train.trainer import fit

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        cfg = TrainConfig.from_dict(dict(data="synthetic", synthetic_users=200, synthetic_items=150, epochs=2,
                                         batch_size=16, sample_size=64, lr=0.01, item_optimizer=item_optimizer,
                                         model={"embedding_dim": 8, "hidden_dim": 8, "total_length": 10}))
        prep = prepare(cfg)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, prep)
        before = model.item_embedding.weight.detach().clone()
        data = SequentialDataset(model, prep.cols, prep.split.train)
        sampler = CandidateSampler(len(prep.index), cfg.sample_size, torch.as_tensor(prep.popularity), cfg.negatives)
        fit(model, data, cfg, sampler, None)
        torch.save({"before": before, "after": model.state_dict()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    exit_rank(0)  # as python -m train ends a torchrun rank (train.pipeline.exit_rank says why)


@pytest.mark.parametrize("item_optimizer", ["sparse_adam", "adam"])
def test_ranks_stay_identical_with_the_sparse_and_the_dense_item_table(tmp_path, item_optimizer):
    # gloo all-reduces the sparse item gradient; every rank must then take the same step, and
    # keep the same table (the renorm after the step covers the all-reduced rows on every rank).
    import torch
    import torch.multiprocessing as mp

    for attempt in range(2):
        try:
            mp.start_processes(_rank, args=(2, f"file://{tmp_path}/rendezvous{attempt}", str(tmp_path),
                                            item_optimizer), nprocs=2, join=True, start_method="spawn")
            break
        except mp.ProcessExitedException as e:
            # The teardown abort exit_rank avoids (SIGABRT); should one still come, one more run
            # for that signal only. Any other failure fails at once.
            if e.signal_name != "SIGABRT" or attempt:
                raise
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(r0["before"], r1["before"])
    moved = (r0["after"]["item_embedding.weight"] != r0["before"]).any(dim=1)
    assert moved.sum() > 100  # it trained the table
    for name, value in r0["after"].items():
        assert torch.equal(value, r1["after"][name]), name
