"""Full-ranking evaluation: every item in the catalogue is ranked (never sampled negatives).

One evaluator for the model and the popularity baseline. Items in the user's history are removed
from the ranking by default; a tie counts against the target (rank = number of other items
scoring at least as high), as in GRU4Rec's conservative evaluation.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
from torch import Tensor

KS = (1, 5, 10, 20)


@torch.no_grad()
def target_ranks(scores: Tensor, targets: Tensor, histories: Tensor, exclude_seen: bool = True) -> Tensor:
    """scores (B, N+1) with column 0 = padding; targets (B,); histories (B, T) padded with 0.
    Returns the 0-based rank of each target among all items (B,)."""
    scores = scores.clone()
    scores[:, 0] = -torch.inf
    if exclude_seen:
        scores.scatter_(1, histories, -torch.inf)
    target_scores = scores.gather(1, targets.view(-1, 1))
    return (scores >= target_scores).sum(dim=1) - 1


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = KS) -> Dict[str, np.ndarray]:
    """Per-case metric arrays: HR@k, NDCG@k, MRR@k."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: Dict[str, np.ndarray] = {}
    for k in ks:
        hit = ranks < k
        out[f"HR@{k}"] = hit.astype(np.float64)
        out[f"NDCG@{k}"] = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
        out[f"MRR@{k}"] = np.where(hit, 1.0 / (ranks + 1.0), 0.0)
    return out


def summarize(per_case: Dict[str, np.ndarray], ci: bool = False, seed: int = 0, n_boot: int = 1000) -> Dict[str, float]:
    """Means, and with ci=True a 95% bootstrap interval over evaluation users for each metric."""
    out: Dict[str, float] = {}
    n = len(next(iter(per_case.values()))) if per_case else 0
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n)) if ci and n else None
    for name, values in per_case.items():
        out[name] = float(values.mean()) if n else float("nan")
        if idx is not None:
            boots = values[idx].mean(axis=1)
            out[f"{name}_ci95"] = [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]
    out["users"] = n
    return out


@torch.no_grad()
def evaluate_ranking(score_batch: Callable[[Tensor, Tensor, Tensor], Tensor], items: Tensor, features: Tensor,
                     lengths: Tensor, targets: Tensor, exclude_seen: bool = True,
                     batch_size: int = 512) -> Dict[str, np.ndarray]:
    """score_batch(items, features, lengths) -> (B, N+1) scores; returns per-case metrics."""
    ranks: List[Tensor] = []
    for s in range(0, items.size(0), batch_size):
        sl = slice(s, s + batch_size)
        scores = score_batch(items[sl], features[sl], lengths[sl])
        ranks.append(target_ranks(scores, targets[sl], items[sl], exclude_seen))
    r = torch.cat(ranks).numpy() if ranks else np.zeros(0)
    return metrics_from_ranks(r)


def model_scorer(model) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """Cosine of taste and item vectors: the ranking the server uses (score() is monotone in it)."""
    matrix = model.item_matrix()

    def score(items: Tensor, features: Tensor, lengths: Tensor) -> Tensor:
        return model(items, features, lengths) @ matrix.T
    return score


def popularity_scorer(popularity: np.ndarray) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """popularity: (N+1,) training counts; the same list for everyone."""
    pop = torch.as_tensor(popularity, dtype=torch.float32).view(1, -1)

    def score(items: Tensor, features: Tensor, lengths: Tensor) -> Tensor:
        return pop.expand(items.size(0), -1)
    return score
