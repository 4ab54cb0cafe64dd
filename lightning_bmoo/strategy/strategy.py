"""BucketMOOStrategy: Lightning's DDP strategy with the bucket-MOO communication hook."""

from __future__ import annotations

import atexit
import functools
import gc
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from ..aggregators import Aggregator
from ..comm import HookOptions, install_bucket_moo_hook
from .language import LanguageFn
from .training import BucketMOOTraining

if TYPE_CHECKING:
    from lightning.fabric.strategies.registry import _StrategyRegistry

# DDPStrategy arguments for other communication hooks; they would replace ours.
_FOREIGN_HOOK_ARGS = (
    "ddp_comm_state",
    "ddp_comm_hook",
    "ddp_comm_wrapper",
    "model_averaging_period",
)


class BucketMOOStrategy(BucketMOOTraining, DDPStrategy):
    """DDP whose gradient all-reduce is replaced by a per-bucket multi-objective solve.

    Each microbatch (*slot*) must hold one language; its gradient is that language's row in
    the solve. With ``Trainer(accumulate_grad_batches=K)`` every rank contributes ``K`` slots
    per optimizer step (gradient sync stays on for all of them), so ``W * K`` slots meet in
    each solve. The language of a batch is read from ``batch["language"]`` before the training
    step runs, or from ``language_fn(batch)``.

    Registered as ``"bmoo"`` (and ``"bmoo_spawn"``, ``"bmoo_fork"``, ``"bmoo_notebook"``,
    ``"bmoo[_spawn|_fork]_find_unused_parameters_{true,false}"``) on ``import lightning_bmoo``.

    Args:
        aggregator: aggregator name (see :func:`~lightning_bmoo.available_aggregators`) or an
            :class:`~lightning_bmoo.Aggregator` instance.
        aggregator_options: keyword arguments of the aggregator's constructor.
        transport: ``"sharded"`` (the traffic of an all-reduce) or ``"gather"``.
        granularity: ``"bucket"``, ``"parameter"`` or ``"global"`` (one solve per DDP bucket,
            per parameter tensor, or for the whole model).
        nonfinite: ``"drop"`` (leave a language with NaN/inf gradients out of a solve, with a
            warning) or ``"propagate"`` (let NaN/inf reach the gradients so that AMP's
            GradScaler skips the step). ``None`` picks ``"propagate"`` when the precision plugin
            has a GradScaler (``16-mixed``), else ``"drop"``.
        seed: seed of stochastic aggregators (PCGrad), identical on every rank.
        direction_only: rescale each group's update to the length of the ``mean`` update over
            the same languages, so that the aggregator only chooses the direction (see
            :class:`~lightning_bmoo.comm.HookOptions`).
        slots_per_rank: backward passes per optimizer step and rank, for manual optimization
            (default 1). Under automatic optimization it is ``accumulate_grad_batches``; leave it
            unset or equal.
        language_fn: returns the language (a ``str``) of a training batch; by default
            ``batch[language_key]``, a string or a sequence of identical strings. Under
            ``start_method="spawn"`` it must be picklable (a module-level function).
        language_key: the batch field holding the language, when ``language_fn`` is unset.
        accelerator: see :class:`~lightning.pytorch.strategies.DDPStrategy`.
        parallel_devices: see :class:`~lightning.pytorch.strategies.DDPStrategy`.
        cluster_environment: see :class:`~lightning.pytorch.strategies.DDPStrategy`.
        checkpoint_io: see :class:`~lightning.pytorch.strategies.DDPStrategy`.
        precision_plugin: see :class:`~lightning.pytorch.strategies.DDPStrategy`.
        process_group_backend: ``"gloo"``, ``"nccl"``...; by default from the device.
        timeout: timeout of the process group's collectives.
        start_method: ``"popen"`` (scripts, torchrun, SLURM), ``"spawn"``, ``"fork"`` or
            ``"forkserver"``.
        **kwargs: passed to :class:`~torch.nn.parallel.DistributedDataParallel`
            (``bucket_cap_mb``, ``find_unused_parameters``, ``static_graph``...).

    Raises:
        ValueError: for an unknown aggregator, aggregator option, transport, granularity or
            non-finite policy, or an invalid ``slots_per_rank``.
        TypeError: if another DDP communication hook is passed.
    """

    strategy_name = "bmoo"

    def __init__(
        self,
        aggregator: str | Aggregator = "mgda",
        *,
        aggregator_options: dict[str, Any] | None = None,
        transport: str = "sharded",
        granularity: str = "bucket",
        nonfinite: str | None = None,
        seed: int = 0,
        direction_only: bool = False,
        slots_per_rank: int | None = None,
        language_fn: LanguageFn | None = None,
        language_key: str = "language",
        accelerator: pl.accelerators.Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision_plugin: Precision | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
        **kwargs: Any,
    ) -> None:
        # LightningCLI passes every DDPStrategy argument found through **kwargs, as None.
        foreign = sorted(k for k in _FOREIGN_HOOK_ARGS if kwargs.get(k) is not None)
        if foreign:
            raise TypeError(
                f"BucketMOOStrategy registers its own communication hook and does not take "
                f"{foreign}. Use lightning's DDPStrategy for other hooks."
            )
        # Fail at construction, not minutes later when the hook registers on every rank.
        # slots_per_rank and nonfinite stay None until the trainer decides them.
        options = HookOptions.build(
            aggregator,
            aggregator_options,
            transport=transport,
            granularity=granularity,
            nonfinite=nonfinite,
            seed=seed,
            direction_only=direction_only,
            slots_per_rank=slots_per_rank,
        )
        self._init_training(options, language_fn, language_key)
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin,
            process_group_backend=process_group_backend,
            timeout=timeout,
            start_method=start_method,
            **kwargs,
        )
        self._owns_process_group = False

    # -- setup -----------------------------------------------------------------------------

    @override
    def setup_distributed(self) -> None:
        # Only a process group we created is ours to destroy (at exit, see teardown).
        self._owns_process_group = not (dist.is_available() and dist.is_initialized())
        self._failed = False
        super().setup_distributed()

    @override
    def configure_ddp(self) -> None:
        super().configure_ddp()  # wraps the model; registers no hook on CPU (and none on CUDA)
        assert isinstance(self.model, DistributedDataParallel)
        module = self.lightning_module
        assert module is not None
        self._hook_registered(install_bucket_moo_hook(self.model, self._resolved_options(module)))

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
        # Loaded before setup: the hook does not exist yet, configure_ddp applies it.
        self._take_from_checkpoint(checkpoint)
        return checkpoint

    # -- teardown --------------------------------------------------------------------------

    @override
    def teardown(self) -> None:
        ddp = self.model if isinstance(self.model, DistributedDataParallel) else None
        super().teardown()  # unwraps the LightningModule
        self._pending_checkpoint = None
        self._resuming = False
        if ddp is None:
            return
        del ddp
        # DDP's reducer sits in reference cycles: free it while the process group lives. The
        # group itself is destroyed at exit, before gloo's threads would abort the process
        # ("terminate called without an active exception"); destroying it here would make a
        # later trainer.validate/test in this process re-initialise it, which hangs on gloo.
        gc.collect()
        if not dist.is_initialized():
            return
        if not self._failed:
            self.barrier()
        if self._owns_process_group and dist.get_backend() == "gloo":
            _destroy_process_group_at_exit()

    # -- registry --------------------------------------------------------------------------

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        for name, start_method in (
            ("bmoo", "popen"),
            ("bmoo_spawn", "spawn"),
            ("bmoo_fork", "fork"),
            ("bmoo_notebook", "fork"),
        ):
            strategy_registry.register(
                name,
                cls,
                description=f"Bucket-MOO DDP strategy with `start_method` '{start_method}'",
                override=True,
                start_method=start_method,
            )
            for unused in (False, True):
                strategy_registry.register(
                    f"{name}_find_unused_parameters_{str(unused).lower()}",
                    cls,
                    description=(
                        f"Bucket-MOO DDP strategy with `find_unused_parameters` as {unused} and "
                        f"`start_method` '{start_method}'"
                    ),
                    override=True,
                    find_unused_parameters=unused,
                    start_method=start_method,
                )


@functools.cache
def _destroy_process_group_at_exit() -> None:
    atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # models wrapped later in DDP, e.g. by a second fit
        dist.destroy_process_group()
