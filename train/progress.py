"""Progress inside an epoch: tqdm on a terminal; anywhere else (a log file, a pipe, a scheduler's
capture) a log line every `interval` seconds a person can follow:

    epoch 1/3 step 1200/8000 (15%): 18,400 events/s, loss 5.8123, eta 6m10s
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Optional

from tqdm import tqdm

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class EpochProgress:
    """update() after every step with that step's sequences, events and mean loss. `world`: the
    number of DDP ranks; rank 0 reports and counts its events x world (every rank runs the same
    number of steps of similar batches)."""

    def __init__(self, epoch: int, epochs: int, steps: int, interval: float, enabled: bool = True,
                 world: int = 1, terminal: Optional[bool] = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.epoch, self.epochs, self.steps, self.interval, self.world = epoch, epochs, steps, interval, world
        self.clock = clock
        self.step = self.sequences = self.events = 0
        self.loss_sum = 0.0
        self.t0 = self.last = clock()
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = (tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", leave=False, mininterval=2.0)
                    if enabled and terminal else None)
        self.lines = enabled and not terminal

    def update(self, sequences: int, events: int, loss: float) -> None:
        self.step += 1
        self.sequences += sequences
        self.events += events
        self.loss_sum += loss * sequences
        now = self.clock()
        if self.bar is not None:
            rate = self.events * self.world / max(now - self.t0, 1e-9)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{self.loss:.4f}", events_s=f"{rate:.0f}", refresh=False)
        elif self.lines and now - self.last >= self.interval:
            self.last = now
            log.info("%s", self.line(now))

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.sequences, 1)

    def line(self, now: float) -> str:
        elapsed = max(now - self.t0, 1e-9)
        eta = (self.steps - self.step) * elapsed / max(self.step, 1)
        return (f"epoch {self.epoch}/{self.epochs} step {self.step}/{self.steps} "
                f"({100 * self.step / max(self.steps, 1):.0f}%): {self.events * self.world / elapsed:,.0f} "
                f"events/s, loss {self.loss:.4f}, eta {_duration(eta)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
