"""Adam for the item table at the cost of the rows a step touches, on dense Adam's trajectory.

Dense Adam moves every row at every step: a row last looked up at step s keeps moving on its
decaying moments at s+1, s+2, ... by lr * m_k / (sqrt(v_k) + eps), m_k = b1^k m, v_k = b2^k v.
torch's SparseAdam is lazy and skips those moves; on a catalogue where most rows are touched only
now and then, each lookup then moves a row about r/(1-r) ~ 9x less than dense Adam does in all
(r = b1 / sqrt(b2)), and amazon-beauty lost 0.002 HR@10 beyond the CI to that
(bench/results/optimizers.json, lazy_adam).

CatchUpAdam makes the missed moves when a row is next touched, and for every row at flush() (once
an epoch, before validation and checkpoints). Their sum is a series in r:
lr * m / (sqrt(v) + eps) * sum_{k=1..n} r^k c(s+k), with c(j) = sqrt(1 - b2^j) / (1 - b1^j) the
bias correction at step j. With the tail T(j) = sum_{k>=1} r^k c(j+k) = r (c(j+1) + T(j+1)),
tabulated once, the sum is T(s) - r^n T(s+n): O(1) a row. Then the row takes the ordinary Adam
step with its new gradient. What differs from dense Adam: eps in the missed moves is taken at the
last touch's v (it matters only where sqrt(v) is near eps), and the caller renormalises a row once
after the catch-up, not at every missed step.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import torch
from torch import Tensor

EXACT_BIAS_STEPS = 1 << 15  # c(j) is 1 to float precision beyond this (b2^j < 1e-14)


class CatchUpAdam:
    def __init__(self, param: Tensor, lr: float, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param, self.lr, self.eps = param, lr, eps
        self.b1, self.b2 = betas
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self.last = torch.zeros(param.size(0), dtype=torch.long)  # the step each row is advanced to
        self.step_count = 0
        self._r = self.b1 / math.sqrt(self.b2)
        self._tail = self._tail_table(self._r, self.b1, self.b2)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.param.grad = None

    @torch.no_grad()
    def step(self) -> Tensor:
        """One step with the parameter's sparse gradient; returns the rows it moved."""
        grad = self.param.grad
        self.step_count += 1
        if grad is None:
            return torch.empty(0, dtype=torch.long)
        grad = grad.coalesce()
        rows, g = grad.indices()[0], grad.values()
        p, m, v = self._caught_up(rows, self.step_count - 1)
        m.mul_(self.b1).add_(g, alpha=1 - self.b1)
        v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        bc1, bc2 = 1 - self.b1 ** self.step_count, 1 - self.b2 ** self.step_count
        p.addcdiv_(m, v.sqrt().div_(math.sqrt(bc2)).add_(self.eps), value=-self.lr / bc1)
        self._store(rows, p, m, v)
        return rows

    @torch.no_grad()
    def flush(self, chunk: int = 1 << 16) -> None:
        """Bring every row to the current step (what dense Adam's rows would be now)."""
        for start in range(0, self.param.size(0), chunk):
            rows = torch.arange(start, min(start + chunk, self.param.size(0)))
            rows = rows[self.last[rows] < self.step_count]
            if len(rows):
                self._store(rows, *self._caught_up(rows, self.step_count))

    @staticmethod
    def _tail_table(r: float, b1: float, b2: float) -> Tensor:
        """T(j) for j = 0..EXACT_BIAS_STEPS; beyond, c = 1 and T = r / (1 - r)."""
        c = [math.sqrt(1 - b2 ** j) / (1 - b1 ** j) if j else 0.0 for j in range(EXACT_BIAS_STEPS + 1)]
        tail = [0.0] * (EXACT_BIAS_STEPS + 1)
        tail[-1] = r / (1 - r)
        for j in range(EXACT_BIAS_STEPS - 1, -1, -1):
            tail[j] = r * (c[j + 1] + tail[j + 1])
        return torch.tensor(tail, dtype=torch.float64)

    def _caught_up(self, rows: Tensor, to_step: int):
        """Copies of the rows' value and moments after dense Adam's moment-only steps up to to_step."""
        last = self.last[rows]
        n = (to_step - last).clamp_min(0)
        top = len(self._tail) - 1
        r_n = self._r ** n.to(torch.float64)
        coef = self._tail[last.clamp_max(top)] - r_n * self._tail[(last + n).clamp_max(top)]
        p, m, v = self.param[rows], self.exp_avg[rows], self.exp_avg_sq[rows]
        p -= (self.lr * coef).to(p.dtype)[:, None] * m / (v.sqrt() + self.eps)
        nf = n.to(torch.float64)[:, None]
        m *= (self.b1 ** nf).to(p.dtype)
        v *= (self.b2 ** nf).to(p.dtype)
        return p, m, v

    def _store(self, rows: Tensor, p: Tensor, m: Tensor, v: Tensor) -> None:
        self.param.index_copy_(0, rows, p)
        self.exp_avg.index_copy_(0, rows, m)
        self.exp_avg_sq.index_copy_(0, rows, v)
        self.last[rows] = self.step_count

    def state_dict(self) -> Dict[str, Any]:
        return {"kind": "catchup_adam", "step": self.step_count, "exp_avg": self.exp_avg,
                "exp_avg_sq": self.exp_avg_sq, "last": self.last}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("kind") != "catchup_adam":
            raise ValueError("the checkpoint's item-table optimizer state is not CatchUpAdam's")
        self.step_count = int(state["step"])
        self.exp_avg.copy_(state["exp_avg"]); self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.last.copy_(state["last"])
