"""BucketMOOStrategy: Lightning's DDP strategy with the bucket-MOO communication hook."""

from __future__ import annotations

import atexit
import functools
import gc
import signal
import sys
import warnings
from collections.abc import Callable, Generator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.callbacks import GradientAccumulationScheduler
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from typing_extensions import override

from ..aggregators import Aggregator
from ..comm import BucketMOOState, HookOptions, install_bucket_moo_hook
from ..data import LanguageBatchSampler, check_dataloader
from .language import LanguageFn, batch_language, checked_language

if TYPE_CHECKING:
    from lightning.fabric.strategies.registry import _StrategyRegistry

_SIGKILL = signal.SIGTERM if sys.platform == "win32" else signal.SIGKILL

#: Key of the hook's state in a Lightning checkpoint.
CHECKPOINT_KEY = "bucket_moo"

# DDPStrategy arguments for other communication hooks; they would replace ours.
_FOREIGN_HOOK_ARGS = (
    "ddp_comm_state",
    "ddp_comm_hook",
    "ddp_comm_wrapper",
    "model_averaging_period",
)


class BucketMOOStrategy(DDPStrategy):
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
        self._options = HookOptions.build(
            aggregator,
            aggregator_options,
            transport=transport,
            granularity=granularity,
            nonfinite=nonfinite,
            seed=seed,
            direction_only=direction_only,
            slots_per_rank=slots_per_rank,
        )
        if language_fn is not None and not callable(language_fn):
            raise TypeError(f"language_fn must be callable, got {type(language_fn).__name__}.")
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
        self._language_fn = language_fn
        self._language_key = language_key
        self._hook_state: BucketMOOState | None = None
        self._pending_checkpoint: dict[str, Any] | None = None
        self._resuming = False
        self._steps_seen = 0
        self._owns_process_group = False
        self._failed = False

    # -- public ----------------------------------------------------------------------------

    @property
    def options(self) -> HookOptions:
        """The hook's options as configured (``slots_per_rank``/``nonfinite`` may be undecided)."""
        return self._options

    @property
    def hook_state(self) -> BucketMOOState | None:
        """The hook's state while fitting (``last_step`` holds the last step's statistics)."""
        return self._hook_state

    @property
    def bmoo_state(self) -> BucketMOOState | None:
        """Deprecated name of :attr:`hook_state`."""
        warnings.warn(
            "BucketMOOStrategy.bmoo_state is deprecated: use hook_state.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self._hook_state

    def language_of(self, batch: Any) -> str:
        """Returns the language of a training batch, as the strategy declares it to the hook.

        Raises:
            ValueError: if the batch has no language or mixes languages.
        """
        if self._language_fn is None:
            return batch_language(batch, self._language_key)
        return checked_language(self._language_fn(batch), "language_fn")

    def hook_state_dict(self) -> dict[str, Any]:
        """The hook's state as saved under ``checkpoint["bucket_moo"]``."""
        return self._require_state().state_dict()

    def load_hook_state_dict(self, saved: dict[str, Any]) -> None:
        """Restores :meth:`hook_state_dict`'s output into the registered hook.

        Differences between the checkpoint's settings and today's warn once (on rank 0).
        """
        state = self._require_state()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state.load_state_dict(saved)
        for warning in caught:
            rank_zero_warn(str(warning.message))
        self._steps_seen = state.step

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
        options = self._options.replace(
            slots_per_rank=self._resolve_slots_per_rank(module),
            nonfinite=self._resolve_nonfinite(),
        )
        self._hook_state = install_bucket_moo_hook(self.model, options)
        self._hook_state.expect_scaler = self._scaler() is not None
        self._steps_seen = 0
        pending, self._pending_checkpoint = self._pending_checkpoint, None
        if pending is not None:
            self.load_hook_state_dict(pending)
        elif self._resuming:
            rank_zero_warn(
                "The checkpoint holds no bucket-MOO state (saved by another strategy?): the hook "
                "starts at step 0 with a fresh aggregator state."
            )

    def _resolve_slots_per_rank(self, module: pl.LightningModule) -> int:
        accumulate = module.trainer.accumulate_grad_batches
        configured = self._options.slots_per_rank
        if not module.automatic_optimization:
            return configured or 1
        if configured not in (None, accumulate):
            raise ValueError(
                f"BucketMOOStrategy(slots_per_rank={configured}) disagrees with "
                f"Trainer(accumulate_grad_batches={accumulate}). Under automatic optimization "
                "each accumulated microbatch is a slot: leave slots_per_rank unset."
            )
        return accumulate

    def _scaler(self) -> Any:
        return getattr(self.precision_plugin, "scaler", None)

    def _resolve_nonfinite(self) -> str:
        scaler = self._scaler()
        configured = self._options.nonfinite
        if configured is None:
            return "propagate" if scaler is not None else "drop"
        if configured == "drop" and scaler is not None:
            rank_zero_warn(
                "nonfinite='drop' with a GradScaler: overflowing languages are dropped instead of "
                "reaching the scaler, so the loss scale never backs off. nonfinite='propagate' "
                "(the default under 16-mixed) lets the scaler skip those steps."
            )
        if configured == "propagate" and scaler is None:
            rank_zero_warn(
                "nonfinite='propagate' without a GradScaler: a NaN/inf gradient would reach the "
                "optimizer and the weights. It is meant for precision='16-mixed'; leave "
                "nonfinite unset (or 'drop') otherwise."
            )
        return configured

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        if self._hook_state is None:
            return
        module = self.lightning_module
        assert module is not None
        self._check_accumulation(module.trainer, module.automatic_optimization)
        self._check_samplers(module.trainer, module.automatic_optimization)

    def _check_accumulation(self, trainer: pl.Trainer, automatic: bool) -> None:
        for callback in trainer.callbacks:
            if isinstance(callback, GradientAccumulationScheduler):
                raise ValueError(
                    "BucketMOOStrategy needs a fixed number of slots per step; remove the "
                    "GradientAccumulationScheduler and set Trainer(accumulate_grad_batches=K)."
                )
        K = self._require_state().slots_per_rank
        batches = trainer.num_training_batches
        if automatic and batches != float("inf") and int(batches) % K != 0:
            raise ValueError(
                f"The epoch has {int(batches)} training batches, not a multiple of "
                f"accumulate_grad_batches={K}: Lightning would step the optimizer after a partial "
                "step at the end of each epoch. Make the batches per epoch a multiple of K "
                "(LanguageBatchSampler's length is; check limit_train_batches)."
            )

    def _check_samplers(self, trainer: pl.Trainer, automatic: bool) -> None:
        K = self._require_state().slots_per_rank
        iterables = trainer.train_dataloader
        if iterables is None:
            return
        for loader in CombinedLoader(iterables).flattened:
            sampler = getattr(loader, "batch_sampler", None)
            if not isinstance(sampler, LanguageBatchSampler):
                continue
            # check_dataloader compares the sampler's K with accumulate_grad_batches, which
            # is 1 under manual optimization: check world size and rank only, then K here.
            check_dataloader(
                loader,
                trainer if automatic else trainer.world_size,
                rank=trainer.global_rank,
            )
            if sampler.slots_per_rank != K:
                raise ValueError(
                    f"LanguageBatchSampler(slots_per_rank={sampler.slots_per_rank}) but the "
                    f"bucket-MOO hook expects {K} backward passes per optimizer step: set "
                    f"BucketMOOStrategy(slots_per_rank={sampler.slots_per_rank}) and step the "
                    "optimizer every that many batches, or rebuild the sampler."
                )

    # -- training --------------------------------------------------------------------------

    @contextmanager
    @override
    def block_backward_sync(self) -> Generator[None, None, None]:
        # Lightning runs the first K - 1 accumulated backwards under DDP's no_sync(), which
        # would keep them from the hook; the hook keeps each slot's gradient apart itself.
        yield

    @override
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        if self._hook_state is not None:
            batch = kwargs["batch"] if "batch" in kwargs else args[0]
            # Declared before the step runs, so that automatic and manual backwards see it.
            self._hook_state.set_slot(self.language_of(batch))
        return super().training_step(*args, **kwargs)

    @override
    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any],
        model: pl.LightningModule | torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> Any:
        if self._hook_state is None:
            return super().optimizer_step(optimizer, closure, model, **kwargs)

        def closure_then_check() -> Any:
            # Automatic optimization runs the last slot's backward inside the closure.
            result = closure()
            self._check_step_complete()
            return result

        return super().optimizer_step(optimizer, closure_then_check, model, **kwargs)

    def _check_step_complete(self) -> None:
        state = self._require_state()
        module = self.lightning_module
        automatic = module is None or module.automatic_optimization
        hint = (
            "Make the training batches per epoch a multiple of accumulate_grad_batches, and "
            "run no backward under DDP's no_sync()."
            if automatic
            else f"Call optimizer.step() after every {state.slots_per_rank} backward passes "
            "(BucketMOOStrategy(slots_per_rank=...))."
        )
        if state.slot_index != 0:
            raise RuntimeError(
                f"The optimizer stepped after {state.slot_index} of the {state.slots_per_rank} "
                f"slots of bucket-MOO step {state.step}: the gradients hold no complete step. "
                + hint
            )
        if automatic and state.step != self._steps_seen + 1:
            raise RuntimeError(
                f"{state.step - self._steps_seen} bucket-MOO steps completed between two "
                f"optimizer steps, expected 1 (slots_per_rank={state.slots_per_rank}). " + hint
            )
        self._steps_seen = state.step

    # -- checkpoints -----------------------------------------------------------------------

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        # Weights-only checkpoints carry no optimizer state, so no hook state either.
        if self._hook_state is not None and "optimizer_states" in checkpoint:
            if self._hook_state.slot_index != 0:
                rank_zero_warn(
                    f"Checkpoint saved after {self._hook_state.slot_index} slots of a "
                    "bucket-MOO step: those slots' gradients are not saved. Save between "
                    "optimizer steps (ModelCheckpoint does)."
                )
            checkpoint[CHECKPOINT_KEY] = self.hook_state_dict()
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    @override
    def load_checkpoint(
        self, checkpoint_path: Any, weights_only: bool | None = None
    ) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        # Loaded before setup: the hook does not exist yet, configure_ddp applies it.
        self._pending_checkpoint = checkpoint.get(CHECKPOINT_KEY)
        self._resuming = True
        return checkpoint

    # -- teardown --------------------------------------------------------------------------

    @override
    def on_exception(self, exception: BaseException) -> None:
        # Other ranks may be stuck in a collective or gone: teardown must not wait for them.
        self._failed = True
        super().on_exception(exception)
        # Lightning's script launcher leaves the ranks it started running when this process
        # fails: a stalled one would outlive it, holding its devices. Stop them, as torchrun
        # stops every worker when one fails. (On other ranks the launcher started nothing.)
        if isinstance(self.launcher, _SubprocessScriptLauncher):
            self.launcher.kill(_SIGKILL)

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

    def _require_state(self) -> BucketMOOState:
        if self._hook_state is None:
            raise RuntimeError(
                "The bucket-MOO hook is registered when fitting starts (configure_ddp)."
            )
        return self._hook_state

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
