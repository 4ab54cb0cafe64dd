"""PCGrad: projecting conflicting gradients (gradient surgery)."""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor

from ._base import Aggregator, StochasticMixin


def visiting_orders(T: int, generator: torch.Generator) -> list[list[int]]:
    """Returns, for each task ``i``, the other ``T - 1`` tasks in a uniformly random order.

    All rows come from one draw, ``torch.rand(T, T - 1, generator=generator).argsort(dim=1)``
    (one ``randperm`` per row costs three times as much at ``T = 16``); in row ``i``, index
    ``p`` stands for task ``p + (p >= i)``.

    With two tasks there is nothing to draw, and the generator is left untouched.
    """
    if T == 2:
        return [[1], [0]]
    perms = torch.rand(T, T - 1, generator=generator, dtype=torch.float64).argsort(dim=1)
    return [[p + (p >= i) for p in perm] for i, perm in enumerate(perms.tolist())]


class PCGrad(StochasticMixin, Aggregator):
    """PCGrad, Algorithm 1 of Yu et al., "Gradient Surgery for Multi-Task Learning"
    (NeurIPS 2020, arXiv:2001.06782).

    For each task ``i``, the other tasks ``j`` are visited in a random order and
    ``g_i^PC`` loses its component along ``g_j`` whenever ``g_i^PC . g_j < 0``. Everything is
    done on coefficients ``g_i^PC = sum_k c_ik g_k`` from the Gramian alone.

    Scale: the paper sums the projected gradients; they are averaged here (divided by ``T``),
    so without conflicts the update is exactly the mean gradient.

    Args:
        seed: seed of the generator used when a call passes none.
    """

    name = "pcgrad"

    def __init__(self, seed: int = 0) -> None:
        self._init_generator(seed)

    def _options(self) -> dict[str, int]:
        return {"seed": self.seed}

    def _weights(
        self,
        M: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        T = M.shape[0]
        orders = visiting_orders(T, self._generator_or_own(generator))
        # T^2 scalar steps: Python floats beat tiny tensor ops by orders of magnitude here.
        Kl = M.tolist()
        weights = [0.0] * T
        for i, order in enumerate(orders):
            weights[i] += 1.0
            Ki = Kl[i]
            # Projections made so far as (coefficient, task); g_i^PC . g_j is evaluated
            # lazily from them, which is cheaper than updating all T dot products per step.
            steps: list[tuple[float, int]] = []
            for j in order:
                Kj = Kl[j]
                dot = Ki[j]
                for coef, k in steps:
                    dot += coef * Kj[k]
                # A zero g_j has Kj[j] == 0 and nothing to project on (dot is 0 too).
                if dot < 0.0 and Kj[j] > 0.0:
                    coef = -dot / Kj[j]
                    steps.append((coef, j))
                    weights[j] += coef
        return torch.tensor(weights, dtype=torch.float64) / T
