"""Random weighting: the control arm that asks whether MOO beats a random convex combination."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch
from torch import Tensor

from ._base import Aggregator, StochasticMixin, _conventional


class RandomWeights(StochasticMixin, Aggregator):
    """Weights drawn uniformly from the simplex (Dirichlet(1)) at every call.

    The update is a random convex combination of the task gradients, on the same scale as
    ``mean`` (the weights sum to 1, and average 1/T). It ignores the Gramian: it is the control
    for "is multi-objective optimisation better than random weighting?" (Lin et al.,
    "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning",
    TMLR 2022, which draws softmax-normalised Gaussian weights; TorchJD's ``Random`` does the
    same). The Dirichlet(1) draw is the uniform distribution on the simplex, without a
    temperature to tune.

    Like every stochastic method it draws only from the ``generator`` passed to the call (the
    hook passes one seeded by seed, step and group, so every rank draws the same weights), or
    from its own generator seeded with ``seed``; never from the global RNG. The shared
    conventions hold (one task gives ``[1]``, a zero Gramian ``1/T``, neither draws); it makes
    no claim about conflicts, and it is not permutation-equivariant: the weights do not follow
    the tasks.

    Args:
        seed: seed of the generator used when a call passes none.
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._init_generator(seed)

    def _options(self) -> dict[str, int]:
        return {"seed": self.seed}

    def __call__(
        self,
        gramian: Tensor,
        *,
        tasks: Sequence[Hashable] | None = None,
        key: Hashable = None,
        generator: torch.Generator | None = None,
        validate: bool = True,
    ) -> Tensor:
        """As :meth:`Aggregator.__call__`, without scaling or copying ``M``: the draw needs
        only ``T``."""
        diag = self._prepared(gramian, tasks, validate)[1]
        fixed = _conventional(diag)
        if fixed is not None:
            return fixed
        return self._draw(len(diag), generator)

    def _weights(
        self,
        M: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        return self._draw(M.shape[0], generator)

    def _draw(self, T: int, generator: torch.Generator | None) -> Tensor:
        # Normalised i.i.d. Exp(1) draws are Dirichlet(1, ..., 1). Drawn into a numpy array and
        # normalised there: a tensor op costs more than the draw itself.
        a = np.empty(T)
        draws = torch.from_numpy(a).exponential_(generator=self._generator_or_own(generator))
        a /= np.add.reduce(a)
        return draws
