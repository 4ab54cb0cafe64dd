"""Conflict-averse gradient descent (CAGrad)."""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor

from ._base import Aggregator


class CAGrad(Aggregator):
    """Conflict-averse gradient descent (CAGrad)."""

    name = "cagrad"

    def _weights(
        self,
        K: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        raise NotImplementedError
