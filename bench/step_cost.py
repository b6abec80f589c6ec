"""Cost of one training step against the catalogue size: the same model and batches at 50k and 2M
items, with the dense reference (item_optimizer=adam) and the sparse item table (sparse_adam: CatchUpAdam; lazy_adam: SparseAdam).

    .venv/bin/python -m bench.step_cost                      # -> bench/results/step_cost.json
    .venv/bin/python -m bench.step_cost --items 50000 200000 --steps 5

Each step is the trainer's: popularity candidates (train.negatives), the sampled softmax
(train.loss), zero_grad / backward / step (train.optim). Batches are random histories with
length-bucketed lengths (mean ~25 events, at most total_length). Reports ms per step split into
sample / forward / backward / optimizer step, and training events per second. Indicative: run it
on a quiet machine; the load average before and after is recorded.
"""
from __future__ import annotations

from train.threads import quiet_openmp_waits, resolve_threads

quiet_openmp_waits()  # as `python -m train` does, before torch loads OpenMP

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from model import ModelConfig, SequenceModel  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.loss import SampledSoftmaxLoss  # noqa: E402
from train.negatives import CandidateSampler  # noqa: E402
from train.optim import TrainOptimizer  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "step_cost.json"


def batches(n: int, batch_size: int, total_length: int, num_items: int, seed: int):
    """n batches (items, features, targets, lengths) of similar-length random histories."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        u = float(torch.rand(1, generator=g))  # geometric lengths, mean ~25, from g alone
        top = int(min(total_length, 2 + int(torch.log(torch.tensor(u)) / torch.log(torch.tensor(1 - 1 / 25)))))
        lengths = (top - torch.randint(0, 3, (batch_size,), generator=g)).clamp(min=1)
        items = torch.randint(1, num_items + 1, (batch_size, top + 1), generator=g)
        pos = torch.arange(top).unsqueeze(0)
        valid = pos < lengths.unsqueeze(1)
        inputs, targets = items[:, :-1] * valid, items[:, 1:] * valid
        out.append((inputs, torch.zeros(batch_size, top, 5, dtype=torch.long), targets, lengths))
    return out


def measure(num_items: int, item_optimizer: str, steps: int, warmup: int, args) -> dict:
    torch.manual_seed(0)
    mc = ModelConfig(num_items=num_items, embedding_dim=args.dim, hidden_dim=args.hidden, total_length=50)
    model = SequenceModel(mc)
    cfg = TrainConfig(item_optimizer=item_optimizer, batch_size=args.batch, sample_size=args.sample)
    popularity = 1.0 / torch.arange(1, num_items + 2, dtype=torch.float64)  # Zipf
    sampler = CandidateSampler(num_items, cfg.sample_size, popularity, mode="popularity")
    loss_module, opt = SampledSoftmaxLoss(model), TrainOptimizer(model, cfg)
    gen = torch.Generator().manual_seed(0)
    parts = {"sample": 0.0, "forward": 0.0, "backward": 0.0, "step": 0.0}
    events = 0
    for i, (items, feats, targets, lengths) in enumerate(batches(warmup + steps, cfg.batch_size, 50, num_items, 0)):
        t0 = time.perf_counter()
        cands, pos = sampler.sample(targets, gen)
        t1 = time.perf_counter()
        loss = loss_module(items, feats, targets, cands, pos, sampler.log_q_of(cands, targets))
        t2 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if i >= warmup:
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[k] += v
            events += int(lengths.sum())
    total = sum(parts.values())
    return {"items": num_items, "item_optimizer": item_optimizer, "steps": steps,
            "ms_per_step": 1000 * total / steps, "events_per_step": events / steps,
            "events_per_s": events / total,
            "ms_per_step_parts": {k: round(1000 * v / steps, 2) for k, v in parts.items()}}


def _commit() -> str:
    root = Path(__file__).resolve().parent.parent
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "bench/step_cost.py", "train", "model"],
                           cwd=root, capture_output=True, text=True).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[50_000, 2_000_000])
    ap.add_argument("--optimizers", nargs="+", default=["adam", "lazy_adam", "sparse_adam"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sample", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(resolve_threads(0))
    load_before = os.getloadavg()
    rows = []
    for n in args.items:
        for kind in args.optimizers:
            rows.append(measure(n, kind, args.steps, args.warmup, args))
            print(json.dumps(rows[-1]), flush=True)
    result = {"commit": _commit(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "omp_wait": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")},
              "platform": platform.platform(), "cpus": os.cpu_count(),
              "config": {"batch_size": args.batch, "sample_size": args.sample, "embedding_dim": args.dim,
                         "hidden_dim": args.hidden, "negatives": "popularity"},
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
