"""Random weighting: the control arm that asks whether MOO beats a random convex combination."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch
from torch import Tensor

from ._base import Aggregator, StochasticMixin, _conventional, _matrix, _task_names


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
        diag = _matrix(gramian, validate)[1]
        T = len(diag)
        if tasks is not None:
            _task_names(tasks, T)  # raises on a wrong count; random needs no names
        fixed = _conventional(diag)
        if fixed is not None:
            return fixed
        # Normalised i.i.d. Exp(1) draws are Dirichlet(1, ..., 1). Drawn into a numpy array and
        # normalised there by a Python sum, inline: at these sizes a tensor op costs more than
        # the draw, and a numpy reduction or one more function call as much as the sum.
        a = np.empty(T)
        draws = torch.from_numpy(a).exponential_(generator=self._generator_or_own(generator))
        a *= 1.0 / sum(a.tolist())
        return draws

    def _weights(
        self,
        M: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        # Only reached through a subclass's __call__: M is a valid scaled Gramian here.
        return self(M, generator=generator, validate=False)
