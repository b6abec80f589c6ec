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
        loss = F.cross_entropy(logits, positions[mask])
        if self.model.content_loss_weight > 0:  # stage 4: content alone must rank like the item
            cold = self.model.content_item_vectors(candidates)
            cold_logits = (tastes.detach() @ cold.T) * self.model.temperature().detach()
            if log_q is not None:
                cold_logits = cold_logits - log_q[candidates]
            loss = loss + self.model.content_loss_weight * F.cross_entropy(cold_logits, positions[mask])
        return loss
