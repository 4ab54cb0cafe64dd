"""Nash-MTL: the Nash bargaining solution among tasks."""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor

from ._base import Aggregator


class NashMTL(Aggregator):
    """Nash-MTL: the Nash bargaining solution among tasks."""

    name = "nash_mtl"

    def _weights(
        self,
        K: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        raise NotImplementedError
