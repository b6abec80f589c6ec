"""The optimizer of a training run: Adam for the model, and for the item table one of

- `item_optimizer="sparse_adam"` (default): a sparse gradient (`nn.Embedding(sparse=True)`) and
  CatchUpAdam (train/catchup_adam.py), which reads and writes only the rows a step looked up (the
  batch's history items and candidates), so a step costs the same at 2M items as at 50k, and
  which makes the moves dense Adam would have made on a row's momentum since it was last touched;
- `item_optimizer="lazy_adam"`: the same sparse gradient and `torch.optim.SparseAdam`, which skips
  those moves (a row changes only at steps that touch it; its eps sits before the bias
  correction); measured worse on amazon-beauty (bench/results/optimizers.json);
- `item_optimizer="adam"`: the dense reference, one Adam over every parameter (a gradient and an
  update of all N rows at every step).

All use the same init, lr, betas and eps. The sparse ones have no weight decay (dense Adam's L2
moves untouched rows by their value, not by a momentum that can be summed); TrainConfig refuses
weight_decay > 0 with them.

After each step the rows the step moved are renormalised to norm <= 1 (SequenceModel.
renorm_item_rows): the gradient's rows for the sparse table (under DDP its rows after the
all-reduce, the same on every rank), every row for the dense one (Adam moves them all).
`end_epoch()` brings CatchUpAdam's untouched rows up to date before validation and checkpoints.
"""
from __future__ import annotations

from typing import Any, Dict, Union

import torch

from model import SequenceModel

from .catchup_adam import CatchUpAdam
from .config import TrainConfig
from .errors import UserError


class TrainOptimizer:
    """zero_grad / step / state_dict / load_state_dict over the model's two optimizers."""

    def __init__(self, model: SequenceModel, cfg: TrainConfig):
        self.model = model
        table = model.item_embedding.weight
        self.trains_table = table.requires_grad  # frozen stage-1 vectors are in no optimizer
        self.sparse = self.trains_table and cfg.item_optimizer != "adam"
        # Must be set before DDP wraps the model: DDP reads it to expect a sparse gradient.
        model.item_embedding.sparse = self.sparse
        rest = [p for p in model.parameters() if p.requires_grad and not (self.sparse and p is table)]
        self.dense = torch.optim.Adam(rest, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.items: Union[CatchUpAdam, torch.optim.SparseAdam, None] = None
        if self.sparse:
            self.items = (CatchUpAdam(table, cfg.lr) if cfg.item_optimizer == "sparse_adam"
                          else torch.optim.SparseAdam([table], lr=cfg.lr))

    def zero_grad(self) -> None:
        self.dense.zero_grad(set_to_none=True)
        if self.items is not None:
            self.items.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.dense.step()
        if isinstance(self.items, CatchUpAdam):
            self.model.renorm_item_rows(self.items.step())
        elif self.items is not None:
            self.items.step()
            grad = self.model.item_embedding.weight.grad
            if grad is not None:
                self.model.renorm_item_rows(grad.coalesce().indices()[0])
        elif self.trains_table:
            self.model.renorm_item_rows()

    def set_lr(self, lr: float) -> None:
        """Between epochs only (after end_epoch): CatchUpAdam's pending moves use its current lr."""
        for group in self.dense.param_groups:
            group["lr"] = lr
        if isinstance(self.items, CatchUpAdam):
            self.items.lr = lr
        elif self.items is not None:
            for group in self.items.param_groups:
                group["lr"] = lr

    def end_epoch(self) -> None:
        """Make the item table what dense Adam's would be now (CatchUpAdam's pending moves)."""
        if isinstance(self.items, CatchUpAdam):
            self.items.flush()
            self.model.renorm_item_rows()

    def state_dict(self) -> Dict[str, Any]:
        return {"dense": self.dense.state_dict(),
                "items": self.items.state_dict() if self.items is not None else None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.dense.load_state_dict(state["dense"])
        if self.items is not None:
            try:
                self.items.load_state_dict(state["items"])
            except (ValueError, KeyError, TypeError) as e:
                raise UserError(f"the checkpoint's item-table optimizer state does not fit item_optimizer="
                                f"{type(self.items).__name__} ({e}); it was written by an older version: "
                                f"rerun with --fresh to start over") from None

    def release(self) -> None:
        """Leave the model as built: a dense gradient, as anything training it afterwards expects."""
        self.model.item_embedding.sparse = False
