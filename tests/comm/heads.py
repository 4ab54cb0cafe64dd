"""A model with one head per language, and the update the hook must give it (a reference).

The reference is computed in one process, one slot at a time: each language's mean raw
gradient per parameter, the languages whose rows are nonzero in a group solved with the
aggregator, their rows combined. Parameters no slot used get no gradient at all.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from lightning_bmoo.aggregators import get_aggregator

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


@functools.cache
def _task_rows(layout: tuple[str, ...], step: int, K: int):
    """Each language's mean raw gradient per parameter, and which parameters some slot used."""
    model = Heads()
    names = [n for n, _ in model.named_parameters()]
    slot_rows = []
    for s, language in enumerate(layout):
        model.zero_grad(set_to_none=True)
        loss(model, language, step, s % K).backward()
        slot_rows.append(
            {
                n: torch.zeros(p.numel(), dtype=torch.float64)
                if p.grad is None
                else p.grad.double().flatten()
                for n, p in model.named_parameters()
            }
        )
    tasks = sorted(set(layout))
    rows = {
        n: torch.stack(
            [
                torch.stack([r[n] for r, lang in zip(slot_rows, layout) if lang == t]).mean(0)
                for t in tasks
            ]
        )
        for n in names
    }
    used = {n: any(r[n].any() for r in slot_rows) for n in names}
    return tasks, rows, used


def expected_grads(
    layout: list[str], step: int, K: int, groups: list[tuple[str, list[str]]], aggregator: str
) -> dict[str, torch.Tensor | None]:
    """What ``.grad`` must hold after the step, per parameter name (``None``: never used).

    Args:
        layout: language of every slot (slot ``s`` is microbatch ``s % K`` of rank ``s // K``).
        step: the step (it selects the data).
        K: slots per rank.
        groups: the hook's groups as ``(key, parameter names)``.
        aggregator: the aggregator's name.
    """
    tasks, rows, used = _task_rows(tuple(layout), step, K)
    method = get_aggregator(aggregator)
    expected = {}
    for key, params in groups:
        G = torch.cat([rows[n] for n in params], dim=1)
        active = G.norm(dim=1) > 0
        d = torch.zeros(G.shape[1], dtype=torch.float64)
        if active.any():
            Ga = G[active]
            w = method(Ga @ Ga.T, tasks=[t for t, a in zip(tasks, active) if a], key=key)
            d = w @ Ga
        offset = 0
        for n in params:
            size = rows[n].shape[1]
            expected[n] = d[offset : offset + size] if used[n] else None
            offset += size
    return expected
