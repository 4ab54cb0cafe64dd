"""The training data as the strategies see it: find the sampler, check it, resume it.

The one place that reads Lightning's trainer for the sampler: ``lightning_bmoo.data`` knows
nothing of Lightning, and the monitor asks the strategy.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import GradientAccumulationScheduler
from lightning.pytorch.utilities.combined_loader import CombinedLoader

from ..data import LanguageBatchSampler

#: Key of the training sampler's state in a Lightning checkpoint.
SAMPLER_CHECKPOINT_KEY = "bucket_moo_sampler"


def find_language_sampler(trainer: pl.Trainer) -> LanguageBatchSampler | None:
    """The :class:`~lightning_bmoo.LanguageBatchSampler` of the trainer's training data, if any.

    Raises:
        ValueError: if several training dataloaders have one (one schedule per run).
    """
    iterables = trainer.train_dataloader
    if iterables is None:
        return None
    found = [
        loader.batch_sampler
        for loader in CombinedLoader(iterables).flattened
        if isinstance(getattr(loader, "batch_sampler", None), LanguageBatchSampler)
    ]
    if len(found) > 1:
        raise ValueError(
            f"{len(found)} training dataloaders have a LanguageBatchSampler; bucket-MOO training "
            "follows one schedule: combine the languages into one dataset and one sampler."
        )
    return found[0] if found else None


def check_dataloader(
    dataloader: Any, trainer: Any | int, *, rank: int | None = None
) -> LanguageBatchSampler:
    """Checks that ``dataloader`` serves a :class:`~lightning_bmoo.LanguageBatchSampler` matching
    the training.

    Meant for a strategy or callback to call once the dataloader exists (e.g. in
    ``on_train_start`` with ``trainer.train_dataloader``), to fail early with a fix instead of
    training on a schedule the ranks do not share. The bucket-MOO strategies call it.

    Args:
        dataloader: a ``DataLoader``, or a Lightning ``CombinedLoader`` holding one.
        trainer: a Lightning ``Trainer`` (world size, global rank, ``accumulate_grad_batches``
            and ``use_distributed_sampler`` are checked), or just the world size.
        rank: the expected rank; defaults to ``trainer.global_rank`` (unchecked for an int).

    Returns:
        The sampler.

    Raises:
        ValueError: if the batch sampler is missing or was replaced, or its world size, rank or
            slots per rank disagree with the trainer, or Lightning would re-wrap it.
    """
    loaders = list(getattr(dataloader, "flattened", [dataloader]))
    if len(loaders) != 1:
        raise ValueError(
            f"Expected one training dataloader, got {len(loaders)}; check each with "
            "check_dataloader separately."
        )
    loader = loaders[0]
    sampler = getattr(loader, "batch_sampler", None)
    if not isinstance(sampler, LanguageBatchSampler):
        inner = getattr(sampler, "sampler", None)
        hint = (
            f" Lightning replaced it (its sampler is now {type(inner).__name__}): set "
            "Trainer(use_distributed_sampler=False)."
            if "Distributed" in type(inner).__name__
            else " Build it as DataLoader(dataset, batch_sampler=LanguageBatchSampler(...))."
        )
        raise ValueError(
            f"The dataloader's batch_sampler is {type(sampler).__name__}, not a "
            f"LanguageBatchSampler.{hint}"
        )
    if isinstance(trainer, int) and not isinstance(trainer, bool):
        world_size, accumulate, distributed_sampler = trainer, None, False
    else:
        world_size = trainer.world_size
        rank = trainer.global_rank if rank is None else rank
        accumulate = trainer.accumulate_grad_batches
        connector = getattr(trainer, "_accelerator_connector", None)
        distributed_sampler = getattr(connector, "use_distributed_sampler", False)
    if distributed_sampler and world_size > 1:
        raise ValueError(
            "Trainer(use_distributed_sampler=True) re-wraps custom batch samplers under "
            "distributed training, but LanguageBatchSampler already shards over ranks: set "
            "Trainer(use_distributed_sampler=False)."
        )
    if sampler.world_size != world_size or (rank is not None and sampler.rank != rank):
        raise ValueError(
            f"LanguageBatchSampler has rank {sampler.rank} of world_size {sampler.world_size} "
            f"but training runs rank {rank} of {world_size}. It was probably built before "
            "torch.distributed was initialised: build it in setup() or train_dataloader(), or "
            "pass rank=trainer.global_rank, world_size=trainer.world_size."
        )
    if accumulate is not None and accumulate != sampler.slots_per_rank:
        raise ValueError(
            f"Trainer(accumulate_grad_batches={accumulate}) but the sampler has "
            f"slots_per_rank={sampler.slots_per_rank}: optimizer steps would not line up with "
            "the schedule. Make them equal."
        )
    return sampler


def check_training_data(trainer: pl.Trainer, slots_per_rank: int, automatic: bool) -> None:
    """Checks that the trainer's data and accumulation give ``slots_per_rank`` slots per step.

    Raises:
        ValueError: for a ``GradientAccumulationScheduler``, an epoch length that is not a
            multiple of ``K`` (automatic optimization), or a sampler that disagrees with the
            trainer or with ``K``.
    """
    K = slots_per_rank
    for callback in trainer.callbacks:
        if isinstance(callback, GradientAccumulationScheduler):
            raise ValueError(
                "The bucket-MOO strategies need a fixed number of slots per step; remove the "
                "GradientAccumulationScheduler and set Trainer(accumulate_grad_batches=K)."
            )
    batches = trainer.num_training_batches
    if automatic and batches != float("inf") and int(batches) % K != 0:
        raise ValueError(
            f"The epoch has {int(batches)} training batches, not a multiple of "
            f"accumulate_grad_batches={K}: Lightning would step the optimizer after a partial "
            "step at the end of each epoch. Make the batches per epoch a multiple of K "
            "(LanguageBatchSampler's length is; check limit_train_batches)."
        )
    sampler = find_language_sampler(trainer)
    if sampler is None:
        return
    # check_dataloader compares the sampler's K with accumulate_grad_batches, which is 1 under
    # manual optimization: check world size and rank there, and K here.
    loader = next(
        loader
        for loader in CombinedLoader(trainer.train_dataloader).flattened
        if getattr(loader, "batch_sampler", None) is sampler
    )
    check_dataloader(loader, trainer if automatic else trainer.world_size, rank=trainer.global_rank)
    if sampler.slots_per_rank != K:
        raise ValueError(
            f"LanguageBatchSampler(slots_per_rank={sampler.slots_per_rank}) but the bucket-MOO "
            f"hook expects {K} backward passes per optimizer step: set the strategy's "
            f"slots_per_rank={sampler.slots_per_rank} and step the optimizer every that many "
            "batches, or rebuild the sampler."
        )
