"""Seeded samplers of task-gradient matrices G (T x n), including degenerate ones."""

from __future__ import annotations

import torch
from torch import Tensor

KINDS = ("random", "conflicting", "rank_deficient", "duplicated", "extreme_scale", "aligned")


def sample_gradients(kind: str, T: int, n: int = 40, seed: int = 0) -> Tensor:
    """Returns a float64 T x n matrix of task gradients of the given kind."""
    g = torch.Generator().manual_seed(seed * 1000 + T)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    if kind == "random":
        return randn(T, n)
    if kind == "conflicting":
        # Pairs of nearly opposite gradients of different norms: cosines close to -1.
        base = randn(1, n)
        signs = torch.tensor([(-1.0) ** i for i in range(T)], dtype=torch.float64)[:, None]
        norms = torch.linspace(0.5, 3.0, T, dtype=torch.float64)[:, None]
        return signs * norms * base + 0.05 * randn(T, n)
    if kind == "rank_deficient":
        r = max(1, T // 2)
        return randn(T, r) @ randn(r, n)
    if kind == "duplicated":
        rows = randn((T + 1) // 2, n)
        return rows[torch.arange(T) % rows.shape[0]]
    if kind == "extreme_scale":
        # Norms from 1e-6 to 1e6: Gramian entries span 1e-12 .. 1e12.
        exps = torch.linspace(-6.0, 6.0, T, dtype=torch.float64)[:, None]
        return (10.0**exps) * randn(T, n)
    if kind == "aligned":
        base = randn(1, n)
        return base + 0.1 * randn(T, n)
    raise ValueError(f"unknown kind {kind!r}; known: {KINDS}")


def gramian(G: Tensor) -> Tensor:
    """Returns G @ G.T."""
    return G @ G.T
