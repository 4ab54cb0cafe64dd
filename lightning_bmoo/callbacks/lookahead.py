"""TAG's exact lookahead affinity: replays the step's batches with extra forward passes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import Tensor

from .language_means import scalar_loss

#: ``loss_fn(pl_module, batch) -> scalar loss`` used by the exact lookahead.
LossFn = Callable[[pl.LightningModule, Any], Tensor]


def exact_affinity(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    local: list[tuple[str, Any]],
    lr: float,
    loss_fn: LossFn | None,
) -> dict[tuple[str, str], float]:
    """Exact TAG affinity ``1 - L_j(theta - lr g_i) / L_j(theta)`` on the step's batches.

    Every rank receives every slot's batch; rank ``r`` handles the languages ``i`` at positions
    ``r, r + W, ...`` (one backward per slot of ``i``, one forward per slot and language); the
    results are gathered so that every rank returns all pairs. A collective.

    Args:
        trainer: the trainer.
        pl_module: the module being trained.
        local: this rank's ``(language, batch)`` of the step.
        lr: the step's learning rate.
        loss_fn: ``loss_fn(pl_module, batch)``; by default the loss ``training_step`` returns,
            with ``self.log`` silenced.
    """
    slots = _gather_objects(local)
    by_language: dict[str, list[Any]] = defaultdict(list)
    for language, batch in slots:
        by_language[language].append(trainer.strategy.batch_to_device(batch))
    languages = sorted(by_language)
    rank, world = trainer.global_rank, trainer.world_size
    params = [p for p in pl_module.parameters() if p.requires_grad]
    compute = loss_fn or _training_loss
    out: dict[tuple[str, str], float] = {}
    with _silenced(pl_module), trainer.precision_plugin.forward_context():

        def loss_of(language: str) -> Tensor:
            losses = []
            for k, batch in enumerate(by_language[language]):
                # The same seed before and after the lookahead step: same dropout masks.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(k)
                    losses.append(compute(pl_module, batch).float())
            return torch.stack(losses).mean()

        with torch.no_grad():
            before = {j: float(loss_of(j)) for j in languages}
        for i in languages[rank::world]:
            grads = torch.autograd.grad(loss_of(i), params, allow_unused=True)
            saved = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p, g in zip(params, grads):
                    if g is not None:
                        p.sub_(lr * g)
                for j in languages:
                    if j != i and before[j] > 0:
                        out[i, j] = 1.0 - float(loss_of(j)) / before[j]
                for p, s in zip(params, saved):
                    p.copy_(s)
    merged: dict[tuple[str, str], float] = {}
    for part in _gather_objects([out]):
        merged.update(part)
    return merged


def _gather_objects(local: list[Any]) -> list[Any]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(local)
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, local)
    return [item for part in everyone for item in part]


def _training_loss(pl_module: pl.LightningModule, batch: Any) -> Tensor:
    loss = scalar_loss(pl_module.training_step(batch, 0))
    if loss is None:
        raise ValueError(
            "InterferenceMonitor's lookahead needs training_step to return the loss (a tensor or "
            "a dict with 'loss'); pass InterferenceMonitor(loss_fn=...) otherwise."
        )
    return loss


@contextmanager
def _silenced(pl_module: pl.LightningModule) -> Iterator[None]:
    # Replaying training_step must not log its metrics a second time.
    pl_module.log = _no_log  # type: ignore[method-assign]
    pl_module.log_dict = _no_log  # type: ignore[method-assign]
    try:
        yield
    finally:
        del pl_module.log, pl_module.log_dict


def _no_log(*args: Any, **kwargs: Any) -> None:
    return None
