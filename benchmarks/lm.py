"""A causal transformer LM on random tokens, shared by the overhead benchmarks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: Languages the benchmarks' slots rotate over.
LANGUAGES = ("de", "en", "fr", "ru")


class TransformerLM(nn.Module):
    """A pre-norm causal transformer LM: embedding, ``blocks`` encoder layers, norm, head.

    Args:
        vocab: vocabulary size.
        width: model width (the feed-forward layers are 4 times wider).
        blocks: number of transformer layers.
        heads: attention heads per layer.
        seq: sequence length.
    """

    def __init__(self, vocab: int, width: int, blocks: int, heads: int, seq: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.zeros(seq, width))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
            )
            for _ in range(blocks)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position
        for block in self.blocks:
            x = block(x, src_mask=self.mask, is_causal=True)
        return self.head(self.norm(x))


def next_token_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``model``'s next-token predictions on ``tokens`` (batch x seq + 1)."""
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
    )


def train_step(
    model: nn.Module,
    state: Any,
    optimizer: Any,
    tokens: torch.Tensor,
    rank: int,
    step: int,
    languages: tuple[str, ...] = LANGUAGES,
) -> None:
    """One optimizer step of ``K = len(tokens)`` slots (``tokens``: K x batch x seq + 1).

    With a hook ``state``, slot ``s = rank K + k`` of step ``t`` holds language
    ``(t + s) mod T`` of ``languages``: ``min(T, W K)`` languages a step.
    """
    K = len(tokens)
    for k in range(K):
        loss = next_token_loss(model, tokens[k]) / K
        if state is None:
            loss.backward()
        else:
            with state.slot(languages[(step + rank * K + k) % len(languages)]):
                loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
