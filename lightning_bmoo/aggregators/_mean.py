"""Linear scalarisation: the plain average that DDP's all-reduce computes."""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor

from ._base import Aggregator


class Mean(Aggregator):
    """Equal weights ``w_i = 1/T``: the update is the average task gradient.

    This is what data-parallel training does without MOO, and the scale every other
    aggregator is normalised to.
    """

    name = "mean"

    def _weights(
        self,
        K: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        T = K.shape[0]
        return torch.full((T,), 1.0 / T, dtype=torch.float64)
