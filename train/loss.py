"""The training objective as a module, so DDP can wrap it (DDP syncs what runs in forward)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model import SequenceModel


class SampledSoftmaxLoss(nn.Module):
    """Softmax cross-entropy over a candidate set, at every non-padding position.

    Logits are cosine x |w| (a temperature): the bounded tanh score would cap what the loss can
    express. `log_q` (per item) is subtracted for popularity-sampled candidates."""

    def __init__(self, model: SequenceModel):
        super().__init__()
        self.model = model

    def forward(self, items: Tensor, features: Tensor, targets: Tensor, candidates: Tensor,
                positions: Tensor, log_q: Optional[Tensor] = None) -> Tensor:
        mask = targets > 0                                                    # (B, T)
        tastes = self.model.sequence_tastes(items, features)[mask]            # (M, D)
        cand = self.model.item_vectors(candidates)                            # (C, D)
        logits = (tastes @ cand.T) * self.model.temperature()                 # (M, C)
        if log_q is not None:
            logits = logits - log_q[candidates]
        return F.cross_entropy(logits, positions[mask])
