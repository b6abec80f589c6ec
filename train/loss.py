"""The training objective as a module, so DDP can wrap it (DDP syncs what runs in forward)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model import SequenceModel


class SampledSoftmaxLoss(nn.Module):
    """Softmax cross-entropy over a candidate set, at every non-padding position. With every item
    as a candidate (sample_size 0, train/negatives.py) it is the exact full cross-entropy.

    Logits are cosine x |w| (a temperature): the bounded tanh score would cap what the loss can
    express. `log_q` (per candidate, CandidateSampler.log_q_of) is subtracted for popularity-sampled
    candidates."""

    def __init__(self, model: SequenceModel):
        super().__init__()
        self.model = model

    def forward(self, items: Tensor, features: Tensor, targets: Tensor, candidates: Tensor,
                positions: Tensor, log_q: Optional[Tensor] = None) -> Tensor:
        mask = targets > 0                                                    # (B, T)
        tastes, factor = self.model.tastes_and_sharpness(items, features)
        tastes = tastes[mask]                                                 # (M, D)
        cand = self.model.item_vectors(candidates)                            # (C, D)
        bias = -log_q if log_q is not None else None                          # (C,)
        if self.model.use_item_bias:
            item_bias = self.model.logit_bias(candidates)
            bias = item_bias if bias is None else bias + item_bias
        temp = self.model.temperature()
        if self.model.use_position_temperature:  # only then: the seed's |w| gradient sums as before
            temp = temp * factor[mask]                                        # (M, 1)
        loss = F.cross_entropy(_logits(tastes * temp, cand, bias), positions[mask])
        if self.model.content_loss_weight > 0:  # stage 4: content alone must rank like the item
            cold = self.model.content_item_vectors(candidates)
            cold_logits = _logits((tastes * temp).detach(), cold, bias)
            loss = loss + self.model.content_loss_weight * F.cross_entropy(cold_logits, positions[mask])
        return loss


def _logits(queries: Tensor, candidates: Tensor, bias: Optional[Tensor]) -> Tensor:
    """(M, C) = queries @ candidates.T + bias. The temperature scales the (M, D) queries and the
    bias rides in the matmul (addmm): each extra pass over the (M, C) logits, forward and backward,
    cost more than the LSTM (the softmax over M x C is most of a step)."""
    if bias is None:
        return queries @ candidates.T
    return torch.addmm(bias, queries, candidates.T)
