"""The caption decoder: a pre-norm transformer that cross-attends to the image's patch grid.

Each block is causal self-attention, cross-attention to the projected image tokens, then an MLP,
each behind a LayerNorm and a residual. An optional `ImageStage` (the encoder's last layers,
trained with the decoder) runs on the grid before it is projected. Optional `ImageBlock`s then
let the image tokens attend to each other. Positions are learned. Tokens come in through
`config.token_embedding`: a learned embedding that is also the output layer (tied), or CLIP's
frozen text tower (its token table, or its causal per-token states) through a learned
projection, with a learned output layer (`CLIPTextTokens`, built from
`config.token_embedding_source`). A `KVCache` makes generation cost one token's work per step,
and any call can hand back the cross-attention weights of every layer and head (for attention
maps).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from captioner.config import DecoderConfig, EncoderConfig

# `clip_ids` marks model ids with no CLIP token (the compact vocabulary's "unknown") by -1, and
# ids not mapped yet by -2.
NO_CLIP_TOKEN, UNMAPPED = -1, -2


class KVCache:
    """Keys and values per layer: self-attention grows a step at a time, cross-attention is
    computed once from the image and then reused."""

    def __init__(self, n_layers: int):
        self.self_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers
        self.cross_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers
        # CLIP text tower's keys and values, each layer's key then value (clip-contextual)
        self.text_kv: list[torch.Tensor] | None = None

    @property
    def length(self) -> int:
        first = self.self_kv[0]
        return 0 if first is None else first[0].shape[2]

    def reorder(self, rows: torch.Tensor, image_rows: torch.Tensor | None = None) -> None:
        """Keep the self-attention rows `rows` (beam search picks which hypotheses live on),
        and the cross-attention rows `image_rows` when images leave the batch (None: all stay)."""
        for i, kv in enumerate(self.self_kv):
            if kv is not None:
                self.self_kv[i] = (kv[0].index_select(0, rows), kv[1].index_select(0, rows))
        if self.text_kv is not None:
            self.text_kv = [t.index_select(0, rows) for t in self.text_kv]
        for i, kv in enumerate(self.cross_kv):
            if kv is not None and image_rows is not None:
                self.cross_kv[i] = (
                    kv[0].index_select(0, image_rows),
                    kv[1].index_select(0, image_rows),
                )


def check_image_tokens(config: DecoderConfig, features: torch.Tensor) -> None:
    """ValueError unless `features` (batch, tokens, dim) has the grid this decoder was built for:
    its number of tokens and their width."""
    if features.shape[1] != config.image_tokens:
        raise ValueError(
            f"the decoder was built for {config.image_tokens} image tokens, "
            f"got {features.shape[1]}: wrong encoder for this model?"
        )
    if features.shape[2] != config.image_dim:
        raise ValueError(
            f"the decoder was built for image tokens {config.image_dim} wide, "
            f"got {features.shape[2]}: wrong encoder for this model?"
        )


class ImageStage(nn.Module):
    """Trained layers the encoder's grid goes through before the decoder projects it, part of
    the decoder's weights: (batch, tokens, in_dim) -> (batch, tokens, out_dim), the same tokens.
    The encoder makes it (`ImageEncoder.trainable_top`); the decoder only knows this shape."""

    in_dim: int
    out_dim: int


def check_rows(rows: int, images: int) -> None:
    """ValueError unless `rows` of tokens can share `images` image rows, each image the same
    number of consecutive rows (one each, or its beams)."""
    if images < 1 or rows % images:
        raise ValueError(
            f"{rows} rows of tokens for {images} images: each image needs the same number of "
            "consecutive rows"
        )


def check_length(config: DecoderConfig, offset: int, length: int) -> None:
    """ValueError unless `length` more tokens after `offset` fit the learned positions."""
    if offset + length > config.max_length:
        raise ValueError(f"sequence of {offset + length} exceeds max_length {config.max_length}")


def with_token_source(decoder: DecoderConfig, encoder: EncoderConfig) -> DecoderConfig:
    """`decoder` with CLIP token input reading the CLIP encoder's own hub id or folder where
    it names none of its own."""
    if (
        decoder.token_embedding != "learned"
        and decoder.token_embedding_source is None
        and encoder.name == "clip"
        and encoder.source is not None
    ):
        return dataclasses.replace(decoder, token_embedding_source=encoder.source)
    return decoder


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.n_heads, width // self.n_heads).transpose(1, 2)

    def project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key, value = self.key_value(source).chunk(2, dim=-1)
        return self._split_heads(key), self._split_heads(value)

    def forward(
        self,
        x: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`x` (rows, length, d) against keys and values (sources, H, S, E). With fewer
        sources than rows, each source serves `rows / sources` consecutive rows (an image's
        beams): they attend as one longer query, so the source is never copied per row."""
        query = self._split_heads(self.query(x))  # (rows, H, length, E)
        key, value = kv
        rows, heads, length, width = query.shape
        group = rows // key.shape[0]
        if group > 1:  # (sources, H, group * length, E)
            query = query.unflatten(0, (-1, group)).transpose(1, 2).flatten(2, 3)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = query @ key.transpose(-2, -1) / math.sqrt(width)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            mixed = F.dropout(weights, dropout, self.training) @ value
        else:
            weights = None
            mixed = F.scaled_dot_product_attention(query, key, value, mask, dropout)
        if group > 1:  # back to (rows, H, length, ...)
            mixed = mixed.unflatten(2, (group, length)).transpose(1, 2).flatten(0, 1)
            if weights is not None:
                weights = weights.unflatten(2, (group, length)).transpose(1, 2).flatten(0, 1)
        return self.out(mixed.transpose(1, 2).reshape(rows, length, -1)), weights


def _mlp(config: DecoderConfig) -> nn.Sequential:
    width = config.mlp_ratio * config.d_model
    return nn.Sequential(
        nn.Linear(config.d_model, width), nn.GELU(), nn.Linear(width, config.d_model)
    )


class ImageBlock(nn.Module):
    """Self-attention among the image tokens, then an MLP (no mask: every patch sees all)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.d_model)
        self.attention = Attention(config.d_model, config.n_heads, config.dropout)
        self.mlp_norm = nn.LayerNorm(config.d_model)
        self.mlp = _mlp(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attention_norm(x)
        attended, _ = self.attention(h, self.attention.project_kv(h), None, need_weights=False)
        x = x + self.dropout(attended)
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class DecoderBlock(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        d = config.d_model
        self.self_norm = nn.LayerNorm(d)
        self.self_attention = Attention(d, config.n_heads, config.dropout)
        self.cross_norm = nn.LayerNorm(d)
        self.cross_attention = Attention(d, config.n_heads, config.dropout)
        self.mlp_norm = nn.LayerNorm(d)
        self.mlp = _mlp(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        image: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
        need_weights: bool,
        image_index: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.self_norm(x)
        kv = self.self_attention.project_kv(h)
        if cache is not None:
            past = cache.self_kv[layer]
            if past is not None:
                kv = (torch.cat([past[0], kv[0]], dim=2), torch.cat([past[1], kv[1]], dim=2))
            cache.self_kv[layer] = kv
        attended, _ = self.self_attention(h, kv, mask, need_weights=False)
        x = x + self.dropout(attended)

        if cache is not None and cache.cross_kv[layer] is not None:
            image_kv = cache.cross_kv[layer]
        else:
            image_kv = self.cross_attention.project_kv(image)
            if image_index is not None:  # project each image once, however many captions use it
                image_kv = (image_kv[0][image_index], image_kv[1][image_index])
            if cache is not None:
                cache.cross_kv[layer] = image_kv
        attended, weights = self.cross_attention(self.cross_norm(x), image_kv, None, need_weights)
        x = x + self.dropout(attended)
        return x + self.dropout(self.mlp(self.mlp_norm(x))), weights


@dataclass
class DecoderOutput:
    logits: torch.Tensor  # (batch, length, vocab)
    # (batch, layers, heads, length, image_tokens) when asked for, else None
    cross_attention: torch.Tensor | None = None


class CaptionDecoder(nn.Module):
    clip_ids: torch.Tensor  # a buffer, with CLIP token input

    def __init__(self, config: DecoderConfig, image_stage: ImageStage | None = None):
        """`image_stage`: trained encoder layers (`ImageStage`) the grid goes through first,
        taking grids `config.image_dim` wide; None: the projection reads the grid itself."""
        super().__init__()
        self.config = config
        d = config.d_model
        image_width = config.image_dim
        if image_stage is not None:
            if image_stage.in_dim != config.image_dim:
                raise ValueError(
                    f"the image stage takes tokens {image_stage.in_dim} wide, "
                    f"the decoder reads {config.image_dim}"
                )
            image_width = image_stage.out_dim
        self.image_projection = nn.Sequential(nn.Linear(image_width, d), nn.LayerNorm(d))
        self.image_positions = nn.Parameter(torch.zeros(1, config.image_tokens, d))
        self.image_blocks = nn.ModuleList(ImageBlock(config) for _ in range(config.image_layers))
        # Pre-norm blocks leave their sum unnormalised; without blocks the projection's norm holds.
        self.image_norm = nn.LayerNorm(d) if config.image_layers else nn.Identity()
        if config.token_embedding == "learned":
            self.token_embedding = nn.Embedding(config.vocab_size, d)
        else:
            self._build_clip_tokens(config)
        self.positions = nn.Parameter(torch.zeros(1, config.max_length, d))
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(d)
        self.apply(_init_weights)
        nn.init.normal_(self.positions, std=0.02)
        nn.init.normal_(self.image_positions, std=0.02)
        # Added after the initialisation above, which must leave its pretrained weights alone.
        self.image_stage = image_stage

    def _build_clip_tokens(self, config: DecoderConfig) -> None:
        from captioner.encoders.clip import DEFAULT_CLIP, CLIPTextTokens

        source = config.token_embedding_source or DEFAULT_CLIP
        contextual = config.token_embedding == "clip-contextual"
        self.clip_text = CLIPTextTokens(source, contextual)
        if contextual and config.max_length > self.clip_text.max_positions:
            raise ValueError(
                f"decoder.max_length {config.max_length} exceeds the {self.clip_text.max_positions} "
                f"positions of the CLIP text tower from {source}"
            )
        # Model id -> CLIP id: the identity for CLIP's own vocabulary; a compact vocabulary's
        # comes from config.clip_ids, which `map_clip_ids` sets.
        self.register_buffer(
            "clip_ids", torch.full((config.vocab_size,), UNMAPPED), persistent=False
        )
        self.clip_ids_mapped = False
        if config.clip_ids is not None:
            self._set_clip_ids(config.clip_ids)
        elif config.vocab_size == self.clip_text.vocab_size:
            self._set_clip_ids(range(config.vocab_size))
        # The compact vocabulary's "unknown" has no CLIP row: it reads this learned one.
        self.unknown_token = nn.Parameter(torch.zeros(self.clip_text.width))
        self.token_projection = nn.Linear(self.clip_text.width, config.d_model)
        self.output = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def map_clip_ids(self, clip_ids: Sequence[int]) -> None:
        """The CLIP id of each model id (a compact vocabulary's list, -1 for "unknown"), so the
        CLIP token input reads the right rows; kept in the config. ValueError for a list that
        does not fit."""
        if self.config.token_embedding == "learned":
            return
        self._set_clip_ids(clip_ids)
        self.config.clip_ids = self.clip_ids.tolist()  # saved in config.json

    def _set_clip_ids(self, clip_ids: Sequence[int]) -> None:
        ids = torch.as_tensor(list(clip_ids), dtype=torch.long)
        if ids.shape != self.clip_ids.shape:
            raise ValueError(
                f"{len(ids)} CLIP ids for a decoder of {self.config.vocab_size} tokens"
            )
        if ((ids < NO_CLIP_TOKEN) | (ids >= self.clip_text.vocab_size)).any():
            raise ValueError(f"CLIP ids must be -1 or below {self.clip_text.vocab_size}")
        self.clip_ids.copy_(ids)
        self.clip_ids_mapped = True

    def clip_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """The CLIP table's row (width of the text tower) for each model id in `ids`."""
        if not self.clip_ids_mapped:  # checked here, not by reading the buffer back each step
            raise ValueError(
                "the decoder's compact vocabulary is not mapped to CLIP ids: "
                "call map_clip_ids(tokenizer.vocab) after building it"
            )
        clip_ids = self.clip_ids[ids]
        rows = self.clip_text.table[clip_ids.clamp(min=0)]
        unknown = (clip_ids == NO_CLIP_TOKEN).unsqueeze(-1)
        return torch.where(unknown, self.unknown_token.to(rows.dtype), rows)

    def embed_tokens(
        self, ids: torch.Tensor, offset: int | torch.Tensor, cache: KVCache | None = None
    ) -> torch.Tensor:
        """(rows, length, d) token vectors of `ids` at positions `offset`..., before the
        position embedding. clip-contextual keeps the text tower's keys and values in `cache`."""
        if self.config.token_embedding == "learned":
            return self.token_embedding(ids)
        past = None if cache is None else cache.text_kv
        states, present = self.clip_text(self.clip_vectors(ids), offset, past)
        if cache is not None and present:
            cache.text_kv = present
        return self.token_projection(states)

    @property
    def output_weight(self) -> torch.Tensor:
        """(vocab, d): logits are the final states times its transpose."""
        if self.config.token_embedding == "learned":
            return self.token_embedding.weight
        return self.output.weight

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layers)

    def encode_image(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder grid (batch, tokens, image_dim) to the decoder's memory (batch, tokens, d),
        through the image stage first where there is one."""
        check_image_tokens(self.config, features)
        if self.image_stage is not None:
            features = self.image_stage(features)
        memory = self.dropout(self.image_projection(features) + self.image_positions)
        for block in self.image_blocks:
            memory = block(memory)
        return self.image_norm(memory)

    def forward(
        self,
        ids: torch.Tensor,
        image: torch.Tensor,
        cache: KVCache | None = None,
        need_weights: bool = False,
        image_index: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """`ids` (batch, length) follow whatever `cache` already holds; `image` is the memory
        from `encode_image`, a row per row of `ids`, or a row per image when each image's rows
        of `ids` are consecutive and equally many (beam search: its beams). With `image_index`,
        row i of `ids` reads image image_index[i], so several captions of one image share its
        projection (training on all captions)."""
        offset = 0 if cache is None else cache.length
        length = ids.shape[1]
        check_length(self.config, offset, length)
        if image_index is None:
            check_rows(ids.shape[0], image.shape[0])
        x = self.embed_tokens(ids, offset, cache) + self.positions[:, offset : offset + length]
        x = self.dropout(x)
        mask = None
        if length > 1:  # a single new token may look at everything before it
            query_pos = torch.arange(offset, offset + length, device=ids.device)
            key_pos = torch.arange(offset + length, device=ids.device)
            mask = key_pos[None, :] <= query_pos[:, None]
        weights = []
        for layer, block in enumerate(self.blocks):
            x, layer_weights = block(x, image, mask, cache, layer, need_weights, image_index)
            weights.append(layer_weights)
        logits = self.final_norm(x) @ self.output_weight.T
        cross = torch.stack(weights, dim=1) if need_weights else None
        return DecoderOutput(logits, cross)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
