"""Multiple-gradient descent: the min-norm point of the convex hull of the task gradients."""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor

from ._base import Aggregator


class MGDA(Aggregator):
    """Multiple-gradient descent: the min-norm point of the convex hull of the task gradients."""

    name = "mgda"

    def _weights(
        self,
        K: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        raise NotImplementedError
