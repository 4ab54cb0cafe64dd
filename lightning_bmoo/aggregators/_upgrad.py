"""UPGrad: the average of each task gradient projected onto the dual cone of all of them."""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor

from ._base import Aggregator


class UPGrad(Aggregator):
    """UPGrad: the average of each task gradient projected onto the dual cone of all of them."""

    name = "upgrad"

    def _weights(
        self,
        K: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        raise NotImplementedError
