"""A model with one head per language, and the update the hook must give it (a reference)."""

from __future__ import annotations

import torch
from torch import nn

from .. import reference
from .workload import batch

LANGUAGES = ("de", "en", "fr", "ru")


class Heads(nn.Module):
    """A shared body and one head per language."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(8, 16)
        self.heads = nn.ModuleDict({lang: nn.Linear(16, 4) for lang in LANGUAGES})

    def forward(self, x: torch.Tensor, language: str) -> torch.Tensor:
        return self.heads[language](torch.tanh(self.body(x)))


def loss(model: nn.Module, language: str, step: int, slot: int) -> torch.Tensor:
    x, y = batch(language, step, slot)
    return ((model(x, language) - y) ** 2).mean()


def expected_grads(
    layout: list[str], step: int, K: int, groups: list[tuple[str, list[str]]], aggregator: str
) -> dict[str, torch.Tensor | None]:
    """What ``.grad`` must hold after the step, per parameter name (``None``: never used);
    :func:`tests.reference.expected_grads` for :class:`Heads` and :func:`loss`."""
    return reference.expected_grads(Heads, layout, step, K, groups, aggregator, loss)
