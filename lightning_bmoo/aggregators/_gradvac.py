"""Gradient Vaccine: aligning gradients towards EMA cosine targets."""

from __future__ import annotations

import math
from collections.abc import Hashable

import torch
from torch import Tensor

from ._base import StatefulAggregator, StochasticMixin
from ._pcgrad import visiting_orders

# Cap on |phi_hat| in the correction: at |phi_hat| = 1 the target cosine is unreachable and
# the correction coefficient divides by sqrt(1 - phi_hat^2) = 0.
_MAX_TARGET = 1.0 - 1e-8
# Eq. 3 maps a g_i^PC exactly opposite to g_j to zero; near there it is accurate only to
# sqrt(eps) ~ 1e-8, so a g_i^PC shorter than 1e-6 |g_i| is that rounding, with no direction.
_MIN_RELATIVE_SQ_NORM = 1e-12


class GradVac(StochasticMixin, StatefulAggregator):
    """Gradient Vaccine, Algorithm 1 of Wang et al., "Gradient Vaccine: Investigating and
    Improving Multi-task Optimization in Massively Multilingual Models" (ICLR 2021,
    arXiv:2010.05874).

    For each task ``i``, the other tasks ``j`` are visited in a random order. When the cosine
    ``phi_ij`` of ``g_i^PC`` and ``g_j`` is below its target ``phi_hat_ij``, ``g_i^PC`` gets the
    multiple of ``g_j`` that raises the cosine to exactly ``phi_hat_ij`` (Eq. 3); then
    ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij``. Targets start at 0 and are kept
    per ``key`` and per ordered pair of task *names*, so they survive tasks (languages) that
    are absent from some calls. A pair involving a zero gradient has no cosine: it is skipped
    and its target left as it is. This includes a ``g_i^PC`` that Eq. 3 has zeroed, which it
    does to one exactly opposite to ``g_j`` (left below ``1e-6 |g_i|`` by rounding).

    Scale: the paper sums the modified gradients; they are averaged here (divided by ``T``),
    so when no target is violated the update is exactly the mean gradient.

    Args:
        beta: EMA rate of the targets, in ``(0, 1]``; the paper's 0.01 by default.
        seed: seed of the generator used when a call passes none.
    """

    name = "gradvac"

    def __init__(self, beta: float = 0.01, seed: int = 0) -> None:
        super().__init__()
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 < beta <= 1.0:
            raise ValueError(
                f"GradVac's beta (EMA rate of the targets) must be in (0, 1], got {beta!r}."
            )
        self.beta = float(beta)
        self._init_generator(seed)

    def _options(self) -> dict[str, float | int]:
        return {"beta": self.beta, "seed": self.seed}

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
        targets: dict[tuple[Hashable, Hashable], float] = self._state.setdefault(key, {})
        beta = self.beta
        keep = 1.0 - beta
        # T^2 scalar steps: Python floats beat tiny tensor ops by orders of magnitude here, and
        # in this loop every lookup and builtin call shows, hence the hand-inlined clamps.
        Kl = M.tolist()
        norms = [math.sqrt(Kl[j][j]) for j in range(T)]
        has_zero = 0.0 in norms
        weights = [0.0] * T
        for i, order in enumerate(orders):
            weights[i] += 1.0
            Ki = Kl[i]
            name_i = tasks[i]
            sq_norm_i = Ki[i]  # |g_i^PC|^2, kept up to date as corrections are added
            norm_i = norms[i]
            min_sq_norm = _MIN_RELATIVE_SQ_NORM * sq_norm_i
            # Corrections so far as (coefficient, task); g_i^PC . g_j is evaluated lazily from
            # them, which is cheaper than updating all T dot products per correction.
            steps: list[tuple[float, int]] = []
            for j in order:
                if sq_norm_i <= min_sq_norm:
                    # Zeroed by Eq. 3 (or a zero g_i): no pair of this task has a cosine left.
                    break
                norm_j = norms[j]
                if has_zero and norm_j == 0.0:
                    continue
                Kj = Kl[j]
                norm_ij = norm_i * norm_j
                dot = Ki[j]
                for coef, k in steps:
                    dot += coef * Kj[k]
                phi = dot / norm_ij
                if phi < -1.0:
                    phi = -1.0
                elif phi > 1.0:
                    phi = 1.0
                pair = (name_i, tasks[j])
                phi_hat = targets.get(pair, 0.0)
                if phi_hat > _MAX_TARGET:
                    target = _MAX_TARGET
                elif phi_hat < -_MAX_TARGET:
                    target = -_MAX_TARGET
                else:
                    target = phi_hat
                if phi < target:
                    sin_hat = math.sqrt(1.0 - target * target)
                    sin_phi = math.sqrt(1.0 - phi * phi)
                    # Eq. 3 with |g_i^PC| / |g_j| = sq_norm_i / norm_ij.
                    coef = sq_norm_i * (target * sin_phi - phi * sin_hat) / (norm_ij * sin_hat)
                    sq_norm_i += coef * (2.0 * dot + coef * Kj[j])
                    if sq_norm_i > min_sq_norm:  # else the next pair breaks off
                        norm_i = math.sqrt(sq_norm_i)
                    steps.append((coef, j))
                    weights[j] += coef
                targets[pair] = keep * phi_hat + beta * phi
        return torch.tensor(weights, dtype=torch.float64) / T
