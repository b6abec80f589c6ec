"""Softmax candidates (seed stage 2): every target in the batch plus random items, or with
sample_size 0 every item (the exact full cross-entropy)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor


class CandidateSampler:
    """uniform: random items uniformly from 1..N. popularity: random items with probability
    proportional to popularity**alpha, and `log_q` holds the log sampling probability of every item
    so the trainer can subtract it from the logits (logQ correction; in-batch targets are drawn
    from the same popularity distribution, so the correction applies to them too).

    A step costs O(sample_size log N), never O(N): popularity draws invert the cumulative
    distribution, computed once, by binary search (torch.multinomial rebuilds it at every call).

    sample_size 0: every item 1..N is a candidate, so the loss is the full softmax over the
    catalogue. Nothing is sampled, so there is no log q to correct for (popularity mode refuses it).
    A step then costs O(positions x N) in time and memory for the logits.

    `log_q_of` gives each candidate's logQ correction. correction "draw": log q, the probability of
    one draw. "inclusion": the log probability that the item is in the step's candidate set at all,
    1 - (1 - p)^M (1 - q)^n for M target positions drawn from the data (in-batch candidates, p
    its item frequencies) and n random draws (q): a set has no duplicates, and an item drawn
    many times a step (n q > 1: Beauty's top 600 items at 8,192 draws) is in it once, so log q
    over-corrects popular items against rare ones by up to log(n q)."""

    def __init__(self, num_items: int, sample_size: int, popularity: Optional[Tensor] = None,
                 mode: str = "uniform", alpha: float = 0.75, correction: str = "draw"):
        if mode not in ("uniform", "popularity"):
            raise ValueError(f"negatives must be 'uniform' or 'popularity', got {mode!r}")
        if sample_size < 0 or (sample_size == 0 and mode == "popularity"):
            raise ValueError(f"sample_size must be >= 1, or 0 (every item, full softmax) with uniform "
                             f"negatives; got {sample_size} with {mode!r}")
        if correction not in ("draw", "inclusion"):
            raise ValueError(f"correction must be 'draw' or 'inclusion', got {correction!r}")
        self.num_items, self.sample_size, self.mode, self.correction = num_items, sample_size, mode, correction
        self.full = sample_size == 0
        self.all_items = torch.arange(1, num_items + 1) if self.full else None  # (N,): candidate i-1 is item i
        self.log_q: Optional[Tensor] = None
        if mode == "popularity":
            if popularity is None:
                raise ValueError("popularity sampling needs item popularity")
            p = popularity.double().clamp(min=0).pow(alpha) + 1e-3  # unseen items stay reachable
            p[0] = 0.0
            self.probs = (p / p.sum()).float()
            self.log_q = torch.log(self.probs.clamp(min=1e-12))
            self.cdf = torch.cumsum(p / p.sum(), 0)  # float64: exact enough for millions of items
            if correction == "inclusion":  # two float64 tables of N + 1: only when asked for (16 MB each at 2M)
                data = popularity.double().clamp(min=0)
                data[0] = 0.0
                self.log1m_q = torch.log1p(-(p / p.sum()).clamp(max=1 - 1e-12))
                self.log1m_data = torch.log1p(-(data / data.sum().clamp(min=1.0)).clamp(max=1 - 1e-12))

    @classmethod
    def from_config(cls, cfg, num_items: int, popularity: Tensor) -> "CandidateSampler":
        """The sampler a TrainConfig asks for (sample_size, negatives, logq_correction)."""
        return cls(num_items, cfg.sample_size, popularity, cfg.negatives, correction=cfg.logq_correction)

    def log_q_of(self, candidates: Tensor, targets: Tensor) -> Tensor:
        """The logQ correction of each candidate (C,) for a step whose targets are `targets` (0 =
        padding), to subtract from its logits. Popularity mode only."""
        assert self.log_q is not None, "logQ correction needs popularity negatives"
        if self.correction == "draw":
            return self.log_q[candidates]
        positions = int((targets > 0).sum())
        draws = max(0, self.sample_size - int(torch.unique(targets[targets > 0]).numel()))
        log_out = positions * self.log1m_data[candidates] + draws * self.log1m_q[candidates]
        # log(1 - P(left out)), floored as log q is (an item no draw can reach stays finite)
        return torch.log(-torch.expm1(log_out)).clamp(min=math.log(1e-12)).float()

    def sample(self, targets: Tensor, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """targets: any shape, 0 = padding. Returns (candidates (C,), position of each target in
        candidates, shaped like targets; padding targets map to position 0 and must be masked)."""
        if self.full:
            return self.all_items, (targets.long() - 1).clamp(min=0)  # int64, as searchsorted gives
        batch_targets = torch.unique(targets[targets > 0])
        n_random = max(0, self.sample_size - batch_targets.numel())
        if n_random == 0:  # the batch's own targets already fill the candidate set
            rand = torch.zeros(0, dtype=torch.long)
        elif self.mode == "uniform":
            rand = torch.randint(1, self.num_items + 1, (n_random,), generator=generator)
        else:
            rand = self.draw_popular(n_random, generator)
        candidates = torch.unique(torch.cat([batch_targets, rand]))  # sorted, no duplicates
        positions = torch.searchsorted(candidates, targets.clamp(min=1))
        positions = positions.clamp(max=candidates.numel() - 1)
        return candidates, positions

    def draw_popular(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """n items drawn with replacement, item i with probability probs[i]: the first index whose
        cumulative probability exceeds a uniform u."""
        u = torch.rand(n, generator=generator, dtype=torch.float64) * self.cdf[-1]
        return torch.searchsorted(self.cdf, u, right=True).clamp_(1, self.num_items)
