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


# Families of the degenerate sweep (see degenerate_gramians).
SWEEP_FAMILIES = ("rank_deficient", "near_singular", "duplicated", "zero_rows", "mixed_scales")
SWEEP_SIZES = tuple(range(2, 17))


def degenerate_gramians(family: str, T: int, count: int, seed: int = 0) -> Tensor:
    """Returns ``count`` float64 Gramians ``G G^T`` (``count x T x T``) of one degenerate family.

    * ``rank_deficient``: rank drawn from ``1 .. T-1``.
    * ``near_singular``: condition number of ``M`` log-uniform in ``1e8 .. 1e16``.
    * ``duplicated``: some rows repeated exactly, others repeated times a factor of either sign.
    * ``zero_rows``: ``1 .. T-1`` rows exactly zero.
    * ``mixed_scales``: one of the above (or plain Gaussian rows) with row norms log-uniform in
      ``1e-12 .. 1e12``.

    Gradients live in ``T + 2`` dimensions or fewer, so many pairs conflict. The Gramians are
    exactly symmetric, as the hook builds them.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + T * 101 + SWEEP_FAMILIES.index(family))
    G = _degenerate_gradients(family, T, count, g)
    M = G @ G.mT
    return (M + M.mT) / 2


def _degenerate_gradients(family: str, T: int, count: int, g: torch.Generator) -> Tensor:
    n = T + 2

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    def randint(low: int, high: int, shape: tuple[int, ...]) -> Tensor:
        return torch.randint(low, high, shape, generator=g)

    if family == "rank_deficient":
        rank = randint(1, T, (count, 1, 1))
        A = randn(count, T, T - 1) * (torch.arange(T - 1) < rank)
        return A @ randn(count, T - 1, n)
    if family == "near_singular":
        log_cond = 8.0 + 8.0 * rand(count, 1)
        # Singular values of G from 1 down to cond^(-1/2), the rest log-uniform between.
        inner = rand(count, T).sort(dim=1).values
        inner[:, 0], inner[:, -1] = 0.0, 1.0
        sigma = 10.0 ** (-0.5 * log_cond * inner)
        U = torch.linalg.qr(randn(count, T, T)).Q
        V = torch.linalg.qr(randn(count, n, T)).Q
        return (U * sigma[:, None, :]) @ V.mT
    if family == "duplicated":
        base = randn(count, T, 6)
        distinct = randint(1, T, (count, 1))
        # Row k copies row k mod distinct, times 1 or a factor of either sign in 0.1 .. 10.
        source = torch.arange(T) % distinct
        G = base.gather(1, source[:, :, None].expand(-1, -1, 6))
        sign = torch.where(rand(count, T) < 0.5, -1.0, 1.0)
        factor = torch.where(rand(count, T) < 0.5, 1.0, sign * 10.0 ** (2.0 * rand(count, T) - 1))
        return G * torch.where(torch.arange(T) < distinct, 1.0, factor)[:, :, None]
    if family == "zero_rows":
        G = randn(count, T, 6)
        zeros = randint(1, T, (count, 1))
        return G * (rand(count, T).argsort(dim=1) >= zeros)[:, :, None]
    if family == "mixed_scales":
        parts = [_degenerate_gradients(f, T, count, g) for f in SWEEP_FAMILIES[:4]]
        width = max(p.shape[2] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, width - p.shape[2])) for p in parts]
        parts.append(randn(count, T, width))
        G = torch.stack(parts)[randint(0, len(parts), (count,)), torch.arange(count)]
        return G * 10.0 ** (24.0 * rand(count, T, 1) - 12.0)
    raise ValueError(f"unknown family {family!r}; known: {SWEEP_FAMILIES}")
