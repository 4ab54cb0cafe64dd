"""BucketMOOFSDPStrategy: Lightning's FSDP2 strategy with the bucket-MOO comm on every unit."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from ..aggregators import Aggregator
from ..comm import HookOptions, install_fsdp_bucket_moo_hook
from .language import LanguageFn
from .training import BucketMOOTraining

if TYPE_CHECKING:
    from lightning.fabric.strategies.registry import _StrategyRegistry


class BucketMOOFSDPStrategy(BucketMOOTraining, ModelParallelStrategy):
    """FSDP2 whose gradient reduce-scatter is replaced by a per-unit multi-objective solve.

    Lightning's :class:`~lightning.pytorch.strategies.ModelParallelStrategy` over one
    data-parallel dimension: shard the model in ``LightningModule.configure_model`` with
    ``fully_shard(block, mesh=self.device_mesh["data_parallel"])`` for each block, then the
    model. After ``configure_model`` the strategy installs the bucket-MOO comm on every
    ``fully_shard`` unit (see :func:`~lightning_bmoo.comm.register_fsdp_bucket_moo_hook`); each
    unit is one group of the solve (``granularity="bucket"``). Everything else is as in
    :class:`~lightning_bmoo.BucketMOOStrategy`: one language per microbatch (slot), read from
    ``batch["language"]`` or ``language_fn(batch)``; ``Trainer(accumulate_grad_batches=K)``
    gives ``K`` slots per rank, each reduced on its own backward pass (Lightning never blocks
    FSDP's gradient sync, which is what the comm needs); checkpoints hold the hook's and the
    sampler's state. FSDP2's ``MixedPrecisionPolicy`` works as usual (Gramians are accumulated
    in float64 whatever the reduce dtype).

    Registered as ``"bmoo_fsdp"`` on ``import lightning_bmoo``. Lightning launches the ranks
    itself (one process per device) or runs under torchrun / SLURM.

    Args:
        aggregator: aggregator name (see :func:`~lightning_bmoo.available_aggregators`) or an
            :class:`~lightning_bmoo.Aggregator` instance.
        aggregator_options: keyword arguments of the aggregator's constructor.
        granularity: ``"bucket"`` (one solve per ``fully_shard`` unit), ``"parameter"`` or
            ``"global"``.
        nonfinite: ``"drop"`` or ``"propagate"``; ``None`` picks ``"propagate"`` when the
            precision plugin has a GradScaler, else ``"drop"``.
        seed: seed of stochastic aggregators (PCGrad), identical on every rank.
        direction_only: rescale each group's update to the length of the ``mean`` update.
        slots_per_rank: backward passes per optimizer step and rank, for manual optimization
            (default 1). Under automatic optimization it is ``accumulate_grad_batches``.
        language_fn: returns the language of a training batch; by default
            ``batch[language_key]``.
        language_key: the batch field holding the language, when ``language_fn`` is unset.
        save_distributed_checkpoint: each rank saves its shards into a checkpoint folder
            (default), or rank 0 saves one full file.
        process_group_backend: ``"gloo"``, ``"nccl"``...; by default from the device.
        timeout: timeout of every collective, FSDP's and the comm's.

    Raises:
        ValueError: for an unknown aggregator, aggregator option, granularity or non-finite
            policy, or an invalid ``slots_per_rank``.
    """

    strategy_name = "bmoo_fsdp"

    def __init__(
        self,
        aggregator: str | Aggregator = "mgda",
        *,
        aggregator_options: dict[str, Any] | None = None,
        granularity: str = "bucket",
        nonfinite: str | None = None,
        seed: int = 0,
        direction_only: bool = False,
        slots_per_rank: int | None = None,
        language_fn: LanguageFn | None = None,
        language_key: str = "language",
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        options = HookOptions.build(
            aggregator,
            aggregator_options,
            granularity=granularity,
            nonfinite=nonfinite,
            seed=seed,
            direction_only=direction_only,
            slots_per_rank=slots_per_rank,
        )
        self._init_training(options, language_fn, language_key)
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    @override
    def setup_environment(self) -> None:
        # One data-parallel dimension over every rank (the parent's "auto" is nodes x devices,
        # a 2-D mesh).
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()
        if self._timeout is not None:
            # The mesh's groups get torch's default timeout (30 min on gloo) unless told:
            # a stalled rank must fail FSDP's collectives and the comm's within ours.
            for name in ("data_parallel", "tensor_parallel"):
                dist.distributed_c10d._set_pg_timeout(
                    self._timeout, self.device_mesh[name].get_group()
                )

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        super().setup(trainer)  # the user's configure_model has sharded the model by now
        if trainer.state.fn != TrainerFn.FITTING:
            return
        module = self.lightning_module
        assert module is not None and self.model is not None
        self._hook_registered(
            install_fsdp_bucket_moo_hook(self.model, self._resolved_options(module))
        )

    # -- checkpoints -----------------------------------------------------------------------

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        self._add_to_checkpoint(checkpoint)
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    @override
    def load_checkpoint(
        self, checkpoint_path: Any, weights_only: bool | None = None
    ) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        self._take_from_checkpoint(checkpoint)
        if self._hook_state is not None:
            # FSDP restores after setup: the comm is installed already, apply the state now.
            self._hook_registered(self._hook_state)
        return checkpoint

    @override
    def teardown(self) -> None:
        super().teardown()
        self._pending_checkpoint = None
        self._resuming = False

    # -- registry --------------------------------------------------------------------------

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        strategy_registry.register(
            cls.strategy_name,
            cls,
            description="Bucket-MOO FSDP2 strategy (the comm on every fully_shard unit)",
            override=True,
        )
