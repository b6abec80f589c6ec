"""The optimizer of a training run: Adam for the model, and for the item table either

- `item_optimizer="sparse_adam"` (default): a sparse gradient (`nn.Embedding(sparse=True)`) and
  `torch.optim.SparseAdam`, which reads and writes only the rows a step looked up (the batch's
  history items and candidates), so a step costs the same at 2M items as at 50k; or
- `item_optimizer="adam"`: the dense reference, one Adam over every parameter as before (a
  gradient and an update of all N rows at every step).

Both use the same init, lr, betas and eps. SparseAdam is "lazy": a row's moments and value change
only at steps that touch it, where dense Adam keeps moving every row on its momentum (and its eps
is added before the bias correction, which matters only for gradients near eps). SparseAdam has
no weight decay; TrainConfig refuses weight_decay > 0 with it.

After each step the rows the step moved are renormalised to norm <= 1 (SequenceModel.
renorm_item_rows): the gradient's rows for the sparse table (under DDP its rows after the
all-reduce, the same on every rank), every row for the dense one (Adam moves them all).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from model import SequenceModel

from .config import TrainConfig


class TrainOptimizer:
    """zero_grad / step / state_dict / load_state_dict over the model's two optimizers."""

    def __init__(self, model: SequenceModel, cfg: TrainConfig):
        self.model = model
        table = model.item_embedding.weight
        self.trains_table = table.requires_grad  # frozen stage-1 vectors are in no optimizer
        self.sparse = self.trains_table and cfg.item_optimizer == "sparse_adam"
        # Must be set before DDP wraps the model: DDP reads it to expect a sparse gradient.
        model.item_embedding.sparse = self.sparse
        rest = [p for p in model.parameters() if p.requires_grad and not (self.sparse and p is table)]
        self.dense = torch.optim.Adam(rest, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.items: Optional[torch.optim.SparseAdam] = (
            torch.optim.SparseAdam([table], lr=cfg.lr) if self.sparse else None)

    def zero_grad(self) -> None:
        self.dense.zero_grad(set_to_none=True)
        if self.items is not None:
            self.items.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.dense.step()
        if self.items is not None:
            self.items.step()
            grad = self.model.item_embedding.weight.grad
            if grad is not None:
                self.model.renorm_item_rows(grad.coalesce().indices()[0])
        elif self.trains_table:
            self.model.renorm_item_rows()

    def state_dict(self) -> Dict[str, Any]:
        return {"dense": self.dense.state_dict(),
                "items": self.items.state_dict() if self.items is not None else None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.dense.load_state_dict(state["dense"])
        if self.items is not None:
            self.items.load_state_dict(state["items"])

    def release(self) -> None:
        """Leave the model as built: a dense gradient, as anything training it afterwards expects."""
        self.model.item_embedding.sparse = False
