"""How training runs at scale: popularity sampling without an O(N) step, thread defaults, the
OpenMP wait policy of `python -m train`, and the progress line written when not on a terminal.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_train_runtime.py
"""
import io
import logging
import os
import subprocess
import sys

import pytest
import torch

from train import threads
from train.config import TrainConfig
from train.negatives import CandidateSampler
from train.pipeline import run
from train.progress import EpochProgress


def test_popularity_draws_follow_the_sampling_distribution():
    pop = torch.cat([torch.zeros(1), torch.tensor([1000.0 / (i + 1) for i in range(40)]), torch.zeros(9)])
    s = CandidateSampler(49, 20_000, pop, mode="popularity")
    g = torch.Generator().manual_seed(0)
    draws, _ = s.sample(torch.zeros(1, 1, dtype=torch.long), g)
    assert draws.min() >= 1 and draws.max() <= 49
    raw = s.draw_popular(400_000, g)  # what sample() draws before it dedupes
    counts = torch.bincount(raw, minlength=50).double()
    expected = s.probs.double() * len(raw)
    sd = (expected * (1 - s.probs.double())).sqrt()
    assert counts[0] == 0
    assert ((counts - expected).abs() <= 5 * sd + 1).all()
    assert counts[45] > 0  # unseen items stay reachable (smoothed)
    assert torch.allclose(s.probs.double(), torch.exp(s.log_q.double()), rtol=1e-5)


def test_popularity_sample_matches_multinomial_frequencies():
    pop = torch.tensor([0.0, 50, 20, 5, 1, 0, 300])
    s = CandidateSampler(6, 3, pop, mode="popularity")
    g = torch.Generator().manual_seed(1)
    ours = torch.cat([s.sample(torch.tensor([[6]]), g)[0] for _ in range(3000)])
    ref = torch.cat([torch.unique(torch.cat([torch.tensor([6]), torch.multinomial(s.probs, 2, True, generator=g)]))
                     for _ in range(3000)])
    a, b = torch.bincount(ours, minlength=7).double(), torch.bincount(ref, minlength=7).double()
    assert a[0] == b[0] == 0
    assert ((a - b).abs() <= 5 * (a + b).sqrt() + 5).all()


def test_threads_default_to_this_process_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert threads.resolve_threads(0) == 2
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert threads.resolve_threads(0) == 8
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.resolve_threads(0) == 1
    assert threads.resolve_threads(5) == 5
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert threads.resolve_threads(0) == 1
    assert 1 <= threads.usable_cores() <= (os.cpu_count() or 1)


@pytest.mark.parametrize("given,expected", [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),
                                            ({"GOMP_SPINCOUNT": "1000"}, "unset")])
def test_the_training_cli_quiets_openmp_before_torch_loads_unless_the_user_chose(given, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    # What counts is the environment at the moment train.__main__ first imports torch.
    code = ("import builtins, os\nreal = builtins.__import__\n"
            "def hook(name, *a, **k):\n"
            "    if name == 'torch':\n"
            "        print(os.environ.get('OMP_WAIT_POLICY', 'unset'), flush=True); os._exit(0)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = hook\nimport train.__main__\n")
    out = subprocess.run([sys.executable, "-c", code], env={**env, **given}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_progress_lines_off_a_terminal_say_step_rate_loss_and_eta(caplog):
    now = [0.0]
    p = EpochProgress(2, 5, steps=10, interval=30.0, world=2, terminal=False, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="train.progress"):
        for _ in range(10):
            now[0] += 10.0
            p.update(sequences=4, events=100, loss=2.5)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # at 30, 60 and 90 s
    assert lines[0] == "epoch 2/5 step 3/10 (30%): 20 events/s, loss 2.5000, eta 1m10s"
    quiet = EpochProgress(1, 1, steps=3, interval=1.0, terminal=False, enabled=False)
    assert quiet.bar is None and not quiet.lines


@pytest.mark.training
def test_a_logged_training_run_reports_progress_inside_the_epoch(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal, even under pytest -s
    cfg = TrainConfig.from_dict(dict(data="synthetic", synthetic_users=200, synthetic_items=100, epochs=1,
                                     batch_size=16, sample_size=64, progress_seconds=1e-6,
                                     model={"embedding_dim": 8, "hidden_dim": 8, "total_length": 10}))
    with caplog.at_level(logging.INFO, logger="train.progress"):
        run(cfg, tmp_path / "out")
    lines = [r.getMessage() for r in caplog.records if r.name == "train.progress"]
    assert len(lines) >= 5
    first, last = lines[0].split(), lines[-1].split()
    assert first[:3] == ["epoch", "1/1", "step"] and first[3].startswith("1/")
    steps = int(first[3].split("/")[1])
    assert last[3] == f"{steps}/{steps}" and "(100%):" in lines[-1] and lines[-1].endswith("eta 0m00s")
    assert all(" events/s, loss " in line for line in lines)


@pytest.mark.parametrize("content", [False, True])
def test_the_sampled_softmax_is_the_plain_formula(content):
    # train/loss.py folds the temperature into the queries and log q into the matmul (speed):
    # the same loss and gradients as cosine x |w| - log q, cross-entropy.
    import torch.nn.functional as F

    from model import ModelConfig, SequenceModel
    from train.loss import SampledSoftmaxLoss

    torch.manual_seed(0)
    mc = ModelConfig(num_items=30, embedding_dim=8, hidden_dim=8, total_length=6, dropout=0.0, feature_dropout=0.0)
    extra = {}
    if content:
        mc.use_content, mc.content_vocab, mc.content_numeric, mc.content_numeric_stats = True, ["a=1"], [], []
        extra = {"item_content": (torch.randint(0, 3, (31, 2)), torch.randint(0, 5, (31, 2)), torch.zeros(31, 1))}
    model = SequenceModel(mc, **extra)
    items, targets = torch.randint(1, 31, (4, 6)), torch.randint(1, 31, (4, 6))
    targets[:, 4:] = 0
    feats = torch.zeros(4, 6, 5, dtype=torch.long)
    cands, pos = CandidateSampler(30, 12).sample(targets, torch.Generator().manual_seed(0))
    log_q = torch.randn(31)

    def reference():
        mask = targets > 0
        tastes = model.sequence_tastes(items, feats)[mask]
        logits = tastes @ model.item_vectors(cands).T * model.temperature() - log_q[cands]
        loss = F.cross_entropy(logits, pos[mask])
        if content:
            cold = tastes.detach() @ model.content_item_vectors(cands).T * model.temperature().detach()
            loss = loss + model.content_loss_weight * F.cross_entropy(cold - log_q[cands], pos[mask])
        return loss

    results = []
    for f in (lambda: SampledSoftmaxLoss(model)(items, feats, targets, cands, pos, log_q[cands]), reference):
        model.zero_grad()
        loss = f()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (a, ga), (b, gb) = results
    assert torch.allclose(a, b, atol=1e-5) and len(ga) == len(gb) > 3
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-5)


@pytest.mark.training
def test_step_cost_bench_runs_every_optimizer_at_two_sizes(tmp_path):
    out = tmp_path / "step_cost.json"
    cmd = [sys.executable, "-m", "bench.step_cost", "--items", "100", "300", "--steps", "2", "--warmup", "1",
           "--batch", "4", "--sample", "16", "--dim", "8", "--hidden", "8", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    import json
    result = json.loads(out.read_text())
    rows = [(r["items"], r["item_optimizer"]) for r in result["results"]]
    assert rows == [(n, kind) for n in (100, 300) for kind in ("adam", "lazy_adam", "sparse_adam")]
    assert all(r["events_per_s"] > 0 and set(r["ms_per_step_parts"]) == {"sample", "forward", "backward", "step"}
               for r in result["results"])
    assert result["omp_wait"] == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}  # as python -m train
    assert len(result["loadavg_before"]) == 3 and result["commit"]
