"""A run's report: training curves as a PNG (loss and validation NDCG@10 per epoch), and the wall
seconds of its phases."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(epochs: List[Dict[str, float]], path: Path, title: str = "") -> None:
    fig, ax1 = plt.subplots(figsize=(7, 4))
    x = [e["epoch"] for e in epochs]
    ax1.plot(x, [e["loss"] for e in epochs], "o-", color="tab:blue", label="training loss")
    ax1.set_xlabel("epoch"); ax1.set_ylabel("sampled-softmax loss", color="tab:blue")
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
