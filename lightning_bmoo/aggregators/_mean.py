"""Linear scalarisation: the plain average that DDP's all-reduce computes."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

from ._base import Aggregator


class Mean(Aggregator):
    """Equal weights ``w_i = 1/T``: the update is the average task gradient.

    This is what data-parallel training does without MOO, and the scale every other
    aggregator is normalised to.
    """

    name = "mean"

    def __call__(
        self,
        gramian: Tensor,
        *,
        tasks: Sequence[Hashable] | None = None,
        key: Hashable = None,
        generator: torch.Generator | None = None,
        validate: bool = True,
    ) -> Tensor:
        """As :meth:`Aggregator.__call__`, without scaling or copying ``M``: 1/T needs only T."""
        if validate or tasks is not None:
            T = len(self._prepared(gramian, tasks, validate)[1])
        else:
            T = gramian.shape[0]
        return torch.full((T,), 1.0 / T, dtype=torch.float64)

    def _weights(
        self,
        M: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        T = M.shape[0]
        return torch.full((T,), 1.0 / T, dtype=torch.float64)
