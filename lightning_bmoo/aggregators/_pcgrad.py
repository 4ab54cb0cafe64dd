"""PCGrad: projecting conflicting gradients (gradient surgery)."""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor

from ._base import Aggregator


class PCGrad(Aggregator):
    """PCGrad: projecting conflicting gradients (gradient surgery)."""

    name = "pcgrad"

    def _weights(
        self,
        K: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        raise NotImplementedError
