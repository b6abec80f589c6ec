"""Item content -> item space. The inputs are id tensors made by train/content.py (the one place
that turns an item table into them, for training, export and catalogue rebuilds alike):

    categorical (M, K) long   field=value token ids (category, each genre, ...); 0 pad, 1 unknown
    text        (M, K) long   hashed word ids of short text fields (title, tags); 0 pad
    numeric     (M, 2F) float per numeric field: standardised log1p(value), and 1.0 if missing
"""
import torch
from torch import Tensor, nn


class ContentEncoder(nn.Module):
    def __init__(self, vocab_size: int, hash_buckets: int, num_numeric: int, dim: int):
        super().__init__()
        # Means over the tokens present (padding_idx excluded), so an item with more genres is not
        # a longer vector; a content-free row (all padding) encodes to the output bias alone.
        self.categorical = nn.EmbeddingBag(vocab_size + 2, dim, mode="mean", padding_idx=0)
        self.text = nn.EmbeddingBag(hash_buckets + 1, dim, mode="mean", padding_idx=0)
        self.numeric = nn.Linear(max(1, 2 * num_numeric), dim)
        self.out = nn.Linear(dim, dim)
        # Start small (the measured setting: warm items mix content in through a learned scale
        # that starts at 0, and content-only vectors are normalised, so only the start is slower).
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()

    def forward(self, categorical: Tensor, text: Tensor, numeric: Tensor) -> Tensor:
        """(M, K), (M, K), (M, 2F) -> (M, D) content vectors (not normalised)."""
        h = self.categorical(categorical) + self.text(text) + self.numeric(numeric)
        return self.out(torch.tanh(h))
