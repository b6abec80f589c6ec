"""FINN.no-style RNN recommender: an LSTM over L2-normalised item vectors, projected back into item
space; items are scored by cosine similarity through a learned scale |w| and bias b (tanh).

    model = SequenceModel(ModelConfig(num_items=N))
    items, feats, lengths = model.pad(histories, [[] for _ in histories])  # (B,T), (B,T,F), (B,)
    taste = model(items, feats, lengths)                                  # (B, D), unit norm
    scores = model.score(taste @ model.item_matrix().T)                   # (B, N+1)

With `use_content`, an item vector is normalize(id embedding + content vector), and items the id
table does not know (indices past num_items, added by a catalogue update through
`set_item_content`) are represented by their content alone, as inputs and as candidates.

Everything a server needs (padding, event encoding, the score transform) is a method of this
module, so `torch.jit.script(model)` carries the one source of truth into the handler.
"""
import math
from typing import Dict, Final, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import (FEATURE_AGE, FEATURE_EVENT_TYPE, FEATURE_GAP, FEATURE_SOURCE, FEATURE_STRENGTH,
                     NUM_EVENT_FEATURES, ModelConfig)
from .content import ContentEncoder
from .features import encode_time_features, strength_bucket
from .padding import pad_batch


class SequenceModel(nn.Module):
    # Feature columns as Final class attributes: scripted code cannot read a module-level int, but
    # inlines these as constants.
    AGE: Final[int] = FEATURE_AGE
    GAP: Final[int] = FEATURE_GAP
    EVENT_TYPE: Final[int] = FEATURE_EVENT_TYPE
    SOURCE: Final[int] = FEATURE_SOURCE
    STRENGTH: Final[int] = FEATURE_STRENGTH
    event_type_ids: Dict[str, int]
    source_ids: Dict[str, int]
    strength_edges: List[float]

    def __init__(self, config: ModelConfig, item_vectors: Optional[Tensor] = None,
                 item_content: Optional[Tuple[Tensor, Tensor, Tensor]] = None):
        """item_content: (categorical, text, numeric) rows 0..N from train.content, required
        with use_content."""
        super().__init__()
        if config.num_items < 1:
            raise ValueError("ModelConfig.num_items must be >= 1")
        self.total_length = config.total_length
        self.num_features = NUM_EVENT_FEATURES
        self.time_buckets = config.time_buckets
        self.use_time = config.use_time
        self.use_event_type = config.use_event_type
        self.use_source = config.use_source
        self.use_strength = config.use_strength
        self.strength_edges: List[float] = [float(e) for e in config.strength_edges]
        self.until_next = config.age_reference == "next"
        self.use_content = config.use_content
        self.residual = config.residual
        self.num_id_items = config.num_items  # rows 1..num_items of the id table are trained items
        self.id_dropout = float(config.id_dropout)
        self.feature_dropout = float(config.feature_dropout)
        self.item_input_dropout = float(config.item_input_dropout)
        self.content_loss_weight = float(config.content_loss_weight) if config.use_content else 0.0
        self.dim = config.embedding_dim
        # Vocabularies live in the scripted module so serving maps strings exactly as training did.
        self.event_type_ids: Dict[str, int] = {v: i + 2 for i, v in enumerate(config.event_types)}
        self.source_ids: Dict[str, int] = {v: i + 2 for i, v in enumerate(config.sources)}

        d = config.embedding_dim
        # Rows stay at norm <= 1 through renorm_item_rows after each optimizer step, not through
        # max_norm: that clipped in place at lookup, so under DDP each rank clipped only the rows its
        # own batch looked up and the ranks' tables drifted apart.
        self.item_embedding = nn.Embedding(config.num_items + 1, d, padding_idx=0)
        with torch.no_grad():  # start on the unit sphere
            self.item_embedding.weight.copy_(F.normalize(self.item_embedding.weight, dim=-1))
            self.item_embedding.weight[0].zero_()
        if item_vectors is not None:
            if tuple(item_vectors.shape) != (config.num_items + 1, d):
                raise ValueError(f"item_vectors must be ({config.num_items + 1}, {d}), "
                                 f"got {tuple(item_vectors.shape)}")
            with torch.no_grad():
                self.item_embedding.weight.copy_(F.normalize(item_vectors.float(), dim=-1))
                self.item_embedding.weight[0].zero_()
        self.item_embedding.weight.requires_grad_(not config.freeze_item_vectors)

        # Stage 4: the content encoder and every item's content ids (buffers, so they travel with
        # the scripted model; a catalogue update appends rows with set_item_content).
        c = config.use_content
        self.content_encoder = ContentEncoder(len(config.content_vocab) if c else 0,
                                              config.content_hash_buckets if c else 1,
                                              len(config.content_numeric) if c else 0, d)
        # ReZero-style: trained items start as pure id vectors and mix content in as far as it
        # helps them; items without an id row (new) are their content alone, whatever this is.
        self.content_scale = nn.Parameter(torch.tensor(0.0))
        for p in list(self.content_encoder.parameters()) + [self.content_scale]:
            p.requires_grad_(c)
        if c and item_content is None:
            raise ValueError("use_content needs item_content (see train.content.encode_content)")
        if not c:
            item_content = (torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long),
                            torch.zeros(1, 1))
        assert item_content is not None
        self.register_buffer("item_categorical", torch.zeros(1, 1, dtype=torch.long))
        self.register_buffer("item_text", torch.zeros(1, 1, dtype=torch.long))
        self.register_buffer("item_numeric", torch.zeros(1, 1))
        self.set_item_content(item_content[0], item_content[1], item_content[2])

        fd = config.feature_dim
        # One small embedding per switchable event feature; disabled ones are 1-row placeholders
        # so the scripted graph has a fixed shape.
        self.age_embedding = nn.Embedding(config.time_buckets if config.use_time else 1, fd, padding_idx=0)
        self.gap_embedding = nn.Embedding(config.time_buckets if config.use_time else 1, fd, padding_idx=0)
        self.type_embedding = nn.Embedding(len(config.event_types) + 2 if config.use_event_type else 1, fd, padding_idx=0)
        self.source_embedding = nn.Embedding(len(config.sources) + 2 if config.use_source else 1, fd, padding_idx=0)
        self.strength_embedding = nn.Embedding(len(config.strength_edges) + 3 if config.use_strength else 1, fd,
                                               padding_idx=0)
        for emb, on in ((self.age_embedding, config.use_time), (self.gap_embedding, config.use_time),
                        (self.type_embedding, config.use_event_type), (self.source_embedding, config.use_source),
                        (self.strength_embedding, config.use_strength)):
            emb.weight.requires_grad_(on)  # unused placeholders must not count as trainable (DDP checks)
            with torch.no_grad():
                if on:  # norm ~1 like the unit item vector: at N(0, 1) the features drown the item early on
                    emb.weight.normal_(0.0, fd ** -0.5)
                emb.weight[0].zero_()
        n_feat = (2 * int(config.use_time) + int(config.use_event_type) + int(config.use_source)
                  + int(config.use_strength))

        self.input_dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(d + n_feat * fd, config.hidden_dim, num_layers=config.num_layers,
                            bias=config.lstm_bias, batch_first=True,
                            dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.output_dropout = nn.Dropout(config.dropout)
        self.rnn2item = nn.Linear(config.hidden_dim * (2 if config.attention else 1), d)
        # The search-only read-out options draw their initial weights from a forked generator, so
        # the seed's model gets the same weights and the same random stream from a seed as before
        # they existed (a rerun at a later commit reproduces quality.json's figures).
        with torch.random.fork_rng(devices=[]):
            # Attention read-out (off: 1x1 placeholders, so the scripted graph has a fixed shape).
            self.use_attention = config.attention
            a = config.hidden_dim if config.attention else 1
            self.attn_query = nn.Linear(a, a, bias=False)
            self.attn_key = nn.Linear(a, a, bias=False)
            # Per-position temperature factor softplus(sharpness(state)); off: a 1x1 placeholder.
            self.use_position_temperature = config.position_temperature
            self.sharpness = nn.Linear(self.rnn2item.in_features if config.position_temperature else 1, 1)
        for p in (self.attn_query.weight, self.attn_key.weight):
            p.requires_grad_(config.attention)
        with torch.no_grad():  # start at softplus(log(e - 1)) = 1: the shared temperature
            self.sharpness.weight.zero_()
            self.sharpness.bias.fill_(math.log(math.e - 1.0))
        for p in self.sharpness.parameters():
            p.requires_grad_(config.position_temperature)
        self.w = nn.Parameter(torch.tensor(float(config.init_scale)), requires_grad=config.learn_temperature)
        # The seed's bias b: a softmax over candidates is shift-invariant, so the loss gives it no
        # gradient; it stays a (frozen) parameter of the score transform.
        self.b = nn.Parameter(torch.tensor(0.0), requires_grad=False)
        # Per-item logit bias (item_bias); rows past num_items (added after training) get 0. Off: a
        # 1-row placeholder, so an export at 2M items does not carry 8 MB of zeros.
        self.use_item_bias = config.item_bias
        self.item_bias = nn.Parameter(torch.zeros(config.num_items + 1 if config.item_bias else 1),
                                      requires_grad=config.item_bias)

    # ---- the shared encoding: called by training directly and by the handler on the scripted model
    @torch.jit.export
    def pad(self, seqs: List[List[int]], feats: List[List[List[int]]]) -> Tuple[Tensor, Tensor, Tensor]:
        return pad_batch(seqs, feats, self.total_length, self.num_features)

    @torch.jit.export
    def encode_events(self, timestamps: List[float], event_types: List[str], sources: List[str],
                      strengths: List[float], now: float) -> List[List[int]]:
        """One row of NUM_EVENT_FEATURES ids per event. NaN timestamps and strengths (not given)
        and unseen strings map to the "unknown" id 1; features the model does not use are left 0."""
        time_feats = encode_time_features(timestamps, now, self.time_buckets, self.until_next)
        rows: List[List[int]] = []
        for i in range(len(timestamps)):
            row = [0] * self.num_features
            if self.use_time:
                row[self.AGE] = time_feats[i][0]
                row[self.GAP] = time_feats[i][1]
            if self.use_event_type:
                row[self.EVENT_TYPE] = self.event_type_ids.get(event_types[i], 1)
            if self.use_source:
                row[self.SOURCE] = self.source_ids.get(sources[i], 1)
            if self.use_strength:
                row[self.STRENGTH] = strength_bucket(strengths[i], self.strength_edges)
            rows.append(row)
        return rows

    @torch.jit.export
    def set_item_content(self, categorical: Tensor, text: Tensor, numeric: Tensor) -> None:
        """Replace every item's content ids: rows 0..M (M >= num_items; rows past num_items are
        items added after training). Used at construction and by catalogue updates."""
        if self.use_content:
            rows = categorical.size(0)
            if rows < self.num_id_items + 1 or text.size(0) != rows or numeric.size(0) != rows:
                raise ValueError("item content needs the same number of rows (>= num_items + 1) in each tensor")
            if numeric.size(1) != self.content_encoder.numeric.in_features:
                raise ValueError("item content has the wrong number of numeric columns")
        self.item_categorical = categorical.long()
        self.item_text = text.long()
        self.item_numeric = numeric.float()

    def renorm_item_rows(self, rows: Optional[Tensor] = None) -> None:
        """Scale id rows (`rows`, or all) back to norm <= 1: training calls it after each optimizer
        step on the rows the step moved. Vectors are normalised before use, so this bounds the raw
        norm only (and with it how far content can pull an item vector)."""
        with torch.no_grad():
            w = self.item_embedding.weight
            if rows is None:
                w.renorm_(2, 0, 1.0)
            else:
                w.index_copy_(0, rows, w.index_select(0, rows).renorm(2, 0, 1.0))

    @torch.jit.export
    def num_rows(self) -> int:
        """Rows of the item matrix: N + 1, or more after a catalogue update added items."""
        if self.use_content:
            return self.item_categorical.size(0)
        return self.num_id_items + 1

    @torch.jit.export
    def item_vectors(self, idx: Tensor) -> Tensor:
        """Unit item vectors (M, D) for item indices (M,). In training mode, with use_content, each
        id embedding is dropped with probability id_dropout, as if the item were new."""
        return self._item_vectors(idx, self.training)

    def _item_vectors(self, idx: Tensor, drop_ids: bool) -> Tensor:
        if not self.use_content:
            return F.normalize(self.item_embedding(idx), dim=-1)
        known = idx <= self.num_id_items
        if drop_ids and self.id_dropout > 0:
            known = known & (torch.rand(idx.size(0), device=idx.device) >= self.id_dropout)
        ids = self.item_embedding(torch.where(known, idx, torch.zeros_like(idx)))
        content = self.content_encoder(self.item_categorical[idx], self.item_text[idx], self.item_numeric[idx])
        v = torch.where(known.unsqueeze(1), ids + self.content_scale * content, content)
        return F.normalize(v, dim=-1)

    def content_item_vectors(self, idx: Tensor) -> Tensor:
        """Unit vectors from content alone (M, D): what an item added after training gets."""
        return F.normalize(self.content_encoder(self.item_categorical[idx], self.item_text[idx],
                                                self.item_numeric[idx]), dim=-1)

    # ---- tensors in, tensors out
    def sequence_tastes(self, items: Tensor, features: Tensor) -> Tensor:
        """items (B, T), features (B, T, F) -> unit taste vectors at every position (B, T, D)."""
        return self.tastes_and_sharpness(items, features)[0]

    def tastes_and_sharpness(self, items: Tensor, features: Tensor) -> Tuple[Tensor, Tensor]:
        """Unit tastes (B, T, D) and each position's temperature factor (B, T, 1): 1 without
        position_temperature. Training's logits are cosine x |w| x factor."""
        if self.use_content:
            x = [self._item_vectors(items.reshape(-1), self.training).view(items.size(0), items.size(1), self.dim)]
        else:
            x = [self.item_embedding(items)]
        if self.training and self.item_input_dropout > 0:  # whole events, as if they were padding
            keep = torch.rand(items.shape, device=items.device) >= self.item_input_dropout
            x[0] = x[0] * keep.unsqueeze(-1).to(x[0].dtype)
        if self.training and self.feature_dropout > 0:  # teach the "unknown" rows a meaning
            unknown = (torch.rand(features.shape, device=features.device) < self.feature_dropout) & (features > 0)
            features = torch.where(unknown, torch.ones_like(features), features)
        if self.use_time:
            x.append(self.age_embedding(features[:, :, self.AGE]))
            x.append(self.gap_embedding(features[:, :, self.GAP]))
        if self.use_event_type:
            x.append(self.type_embedding(features[:, :, self.EVENT_TYPE]))
        if self.use_source:
            x.append(self.source_embedding(features[:, :, self.SOURCE]))
        if self.use_strength:
            x.append(self.strength_embedding(features[:, :, self.STRENGTH]))
        h, _ = self.lstm(self.input_dropout(torch.cat(x, dim=-1)))
        if self.use_attention:  # causal: padding is at the end, so a real position sees real states only
            context = F.scaled_dot_product_attention(self.attn_query(h), self.attn_key(h), h, is_causal=True)
            h = torch.cat([h, context], dim=-1)
        h = self.output_dropout(h)
        taste = self.rnn2item(h)
        if self.residual:
            taste = taste + x[0]
        if self.use_position_temperature:
            factor = F.softplus(self.sharpness(h))
        else:
            factor = torch.ones_like(taste[:, :, :1])
        return F.normalize(taste, dim=-1), factor

    def forward(self, items: Tensor, features: Tensor, lengths: Tensor) -> Tensor:
        """Taste after the last real event of each history (B, D). A zero-length history gives
        the taste at position 0 of an all-padding input (callers answer those with popularity)."""
        tastes = self.sequence_tastes(items, features)
        last = (lengths.clamp(min=1) - 1).view(-1, 1, 1).expand(-1, 1, tastes.size(-1))
        return tastes.gather(1, last).squeeze(1)

    @torch.jit.export
    def item_matrix(self) -> Tensor:
        """Unit item vectors (rows, D), rows = num_rows(); row 0 (padding) is zero."""
        if self.use_content:
            m = self._item_vectors(torch.arange(1, self.num_rows(), device=self.item_categorical.device), False)
            return torch.cat([torch.zeros_like(m[:1]), m], dim=0)
        m = F.normalize(self.item_embedding.weight, dim=-1)
        return torch.cat([torch.zeros_like(m[:1]), m[1:]], dim=0)

    @torch.jit.export
    def temperature(self) -> Tensor:
        return self.w.abs()

    def logit_bias(self, idx: Tensor) -> Tensor:
        """The learned per-item logit bias of item indices (M,); 0 for items without an id row."""
        known = idx <= self.num_id_items
        return torch.where(known, self.item_bias[idx.clamp(max=self.num_id_items)], torch.zeros((), device=idx.device))

    def ranking_rows(self) -> Tensor:
        """With item_bias: rows (R, D + 1) = [item vector, bias / |w|]; [taste, 1] @ rows.T orders
        items as the logit cosine x |w| + bias does."""
        m = self.item_matrix()
        bias = self.logit_bias(torch.arange(m.size(0), device=m.device)) / self.temperature()
        return torch.cat([m, bias.unsqueeze(1)], dim=1)

    @torch.jit.export
    def score(self, cosine: Tensor) -> Tensor:
        """The seed's bounded score: tanh(cosine * |w| + b). Monotone in cosine, so rank by cosine."""
        return torch.tanh(cosine * self.w.abs() + self.b)
