"""Gradient Vaccine: aligning gradients towards EMA cosine targets."""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor

from ._base import Aggregator


class GradVac(Aggregator):
    """Gradient Vaccine: aligning gradients towards EMA cosine targets."""

    name = "gradvac"

    def _weights(
        self,
        K: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        raise NotImplementedError
