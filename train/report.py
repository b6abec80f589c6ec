"""A run's report: training curves as a PNG (loss and validation NDCG@10 per epoch), the wall
seconds of its phases, one record per fit (summary.json's `fits`), the whole run's totals and the
CLI's closing lines."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(epochs: List[Dict[str, float]], path: Path, title: str = "") -> None:
    fig, ax1 = plt.subplots(figsize=(7, 4))
    x = [e["epoch"] for e in epochs]
    ax1.plot(x, [e["loss"] for e in epochs], "o-", color="tab:blue", label="training loss")
    ax1.set_xlabel("epoch"); ax1.set_ylabel("softmax loss", color="tab:blue")
    ve = [e for e in epochs if "valid_NDCG@10" in e]
    if ve:
        ax2 = ax1.twinx()
        ax2.plot([e["epoch"] for e in ve], [e["valid_NDCG@10"] for e in ve], "s-", color="tab:orange")
        ax2.set_ylabel("validation NDCG@10", color="tab:orange")
    ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class PhaseClock:
    """Wall seconds per phase of a run, lap by lap (summary.json's phase_seconds)."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """The time since the previous lap was `phase`'s (added to it when a phase recurs)."""
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


def fit_record(name: str, trained_on: str, hist, windows: int, events: int, wall_seconds: float,
               test: Dict[str, Any]) -> Dict[str, Any]:
    """One fit of a run (train.trainer.History `hist`) as summary.json's `fits` states it.
    seconds_to_best: training seconds until the best epoch ended (wall_seconds_to_best adds the
    validations on the way); a fit without validation (the refit) is best at its last epoch.
    wall_seconds: this process's time in the fit, validations and checkpoints included."""
    best = [e for e in hist.epochs if e["epoch"] <= hist.best_epoch]
    to_best = sum(e["seconds"] for e in best)
    return {"name": name, "trained_on": trained_on, "training_windows": windows, "training_events": events,
            "epochs": len(hist.epochs), "best_epoch": hist.best_epoch,
            "best_valid_NDCG@10": hist.best_ndcg if hist.best_ndcg >= 0 else None,
            "train_seconds": hist.train_seconds, "seconds_to_best": to_best,
            "wall_seconds_to_best": to_best + sum(e.get("validation_seconds", 0.0) for e in best),
            "wall_seconds": wall_seconds,
            "sequences_seen": hist.sequences_seen, "events_seen": hist.events_seen,
            "events_per_s": hist.events_seen / max(hist.train_seconds, 1e-9),
            "validation_curve": hist.epochs,  # per epoch: loss, seconds and (when validated) valid_* metrics
            "test": test}


def run_totals(fits: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The whole run's training: epochs, seconds and throughput over every fit."""
    seconds = sum(f["train_seconds"] for f in fits)
    return {"epochs": sum(f["epochs"] for f in fits), "train_seconds": seconds,
            "sequences_per_s": sum(f["sequences_seen"] for f in fits) / max(seconds, 1e-9),
            "events_per_s": sum(f["events_seen"] for f in fits) / max(seconds, 1e-9)}


def closing_lines(summary: Dict[str, Any], out: str) -> List[str]:
    """What `python -m train` prints at the end: the whole run's time, then every fit's test
    figures (HR@10 and NDCG@10 with their 95% bootstrap intervals) next to popularity's."""
    fits = summary["fits"]
    lines = [f"exported to {out} (the {summary['exported']} model); the run: {len(fits)} fit(s), "
             f"{summary['epochs']} epochs, {summary['train_seconds']:.0f} s training of "
             f"{summary['wall_seconds']:.0f} s wall, {summary['events_per_s']:.0f} events/s",
             f"{'':26}{'HR@10 [95% CI]':>27}{'NDCG@10 [95% CI]':>27}{'MRR@10':>8}"]
    for f in fits:
        lines.append(f"{f['name']}: {f['epochs']} epochs on {f['trained_on']}, best epoch {f['best_epoch']} "
                     f"after {f['seconds_to_best']:.0f} s, {f['train_seconds']:.0f} s training")
        for who in ("model", "popularity"):
            m = f["test"][who]
            lines.append(f"  {who:24}{_with_ci(m, 'HR@10')}{_with_ci(m, 'NDCG@10')}{m['MRR@10']:8.4f}")
    return lines


def _with_ci(m: Dict[str, Any], key: str) -> str:
    lo, hi = m.get(f"{key}_ci95") or (float("nan"), float("nan"))
    return f"{m[key]:10.4f} [{lo:.4f}, {hi:.4f}]"
